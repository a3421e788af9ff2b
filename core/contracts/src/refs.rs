//! Which names are taken for images when a folder or an S3 prefix is listed. A file with
//! one of these suffixes that is not really an image still becomes an error record:
//! nothing given is silently dropped.

/// Image file suffixes, lowercase, with their dot.
pub const IMAGE_SUFFIXES: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif",
];

/// Whether `name` (a file name, path or object key) ends in an image suffix, in any case.
pub fn is_image_name(name: &str) -> bool {
    ends_with_any(name, &IMAGE_SUFFIXES)
}

/// Whether `name` ends in one of `suffixes` (lowercase), in any case.
pub fn ends_with_any<S: AsRef<str>>(name: &str, suffixes: &[S]) -> bool {
    let lower = name.to_ascii_lowercase();
    suffixes.iter().any(|s| lower.ends_with(s.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_in_any_case() {
        for name in ["a.jpg", "b/C.JPEG", "x.Png", "y.tiff", "z.jfif"] {
            assert!(is_image_name(name), "{name}");
        }
        for name in ["notes.txt", "jpg", "a.jpg.txt", "list.csv"] {
            assert!(!is_image_name(name), "{name}");
        }
    }
}
