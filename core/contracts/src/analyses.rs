//! What the analyses beyond tags write into a result line, and the grammar of the crop
//! requests a job makes. The worker computes them (`tagfleet_models::analysis`); this
//! module only says what they look like on the wire.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A category of a categorizer and the probability mass of the classes under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Category {
    pub name: String,
    pub confidence: f32,
}

/// The dominant colors of the whole image, of its background and of its foreground,
/// most dominant first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Colors {
    pub image: Vec<Color>,
    pub background: Vec<Color>,
    /// Empty when nothing stands out from the background (a uniform image).
    pub foreground: Vec<Color>,
}

/// One dominant color.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Color {
    /// `#rrggbb`, lowercase.
    pub hex: String,
    pub rgb: [u8; 3],
    /// Percent of the pixels of its list (image, background or foreground), to a tenth.
    pub share: f64,
    /// The closest named color ("navy") and its basic color ("blue").
    pub name: String,
    pub parent: String,
}

/// The crop suggested for one request: its box, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Crop {
    /// The request as the job wrote it, normalised (`16:9`, `300x200`).
    pub request: String,
    #[serde(rename = "box", skip_serializing_if = "Option::is_none")]
    pub region: Option<Region>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A box in the original image's pixels, after its EXIF orientation is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// Most crops one job may ask for.
pub const MAX_CROPS: usize = 16;
/// Most colors per list one job may ask for.
pub const MAX_COLORS: usize = 16;

/// What a job asks for: "1:1", "16:9" (an aspect ratio) or "300x200" (a size in pixels).
///
/// Parsing ignores surrounding whitespace (requests often come from lists split on commas)
/// but nothing else: terms are plain decimal digits, the separator is `:` or a lowercase
/// `x`. Display gives the canonical form, which parses back to the same request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CropRequest {
    Aspect { w: u32, h: u32 },
    Size { width: u32, height: u32 },
}

/// Widest (and, inverted, tallest) accepted aspect ratio, for ratios and sizes alike:
/// nothing sensible fits a thinner strip.
pub const MAX_RATIO: u32 = 10;
/// Largest accepted width or height of a size request, in pixels.
pub const MAX_SIDE: u32 = 65535;

impl CropRequest {
    /// The width:height ratio the box must have.
    pub fn ratio(self) -> (u32, u32) {
        match self {
            CropRequest::Aspect { w, h } => (w, h),
            CropRequest::Size { width, height } => (width, height),
        }
    }
}

impl FromStr for CropRequest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.is_empty() {
            return Err(
                "empty crop request: expected an aspect ratio like \"16:9\" or a size like \"300x200\""
                    .to_owned(),
            );
        }
        // The longest request is "65535x65535": a longer text is refused without being
        // quoted back, so an error never carries much of what a client sent.
        if text.len() > 11 {
            return Err(format!(
                "a crop request of {} characters is too long to be one (at most \"65535x65535\")",
                text.chars().count()
            ));
        }
        let (kind, separator) = if text.contains(':') {
            ("aspect ratio", ':')
        } else if text.contains('x') {
            ("size", 'x')
        } else {
            return Err(format!(
                "\"{text}\" is neither an aspect ratio like \"16:9\" nor a size like \"300x200\""
            ));
        };
        let terms: Vec<&str> = text.split(separator).collect();
        let [first, second] = terms[..] else {
            return Err(format!(
                "{kind} \"{text}\" has more than one '{separator}': expected two terms"
            ));
        };
        let first = term(first, kind, text)?;
        let second = term(second, kind, text)?;
        if first == 0 || second == 0 {
            return Err(format!("{kind} \"{text}\": both terms must be positive"));
        }
        if u64::from(first) > u64::from(MAX_RATIO) * u64::from(second) {
            return Err(format!(
                "{kind} \"{text}\" is wider than {MAX_RATIO}:1, the widest accepted"
            ));
        }
        if u64::from(second) > u64::from(MAX_RATIO) * u64::from(first) {
            return Err(format!(
                "{kind} \"{text}\" is taller than 1:{MAX_RATIO}, the tallest accepted"
            ));
        }
        if let Some(side) = [first, second].into_iter().find(|&v| v > MAX_SIDE) {
            return Err(format!(
                "{kind} \"{text}\": {side} is above the largest term, {MAX_SIDE}"
            ));
        }
        Ok(if separator == ':' {
            CropRequest::Aspect {
                w: first,
                h: second,
            }
        } else {
            CropRequest::Size {
                width: first,
                height: second,
            }
        })
    }
}

/// One term of a request: plain digits (no sign, no spaces, no decimals, no leading zero,
/// so that a request has one spelling).
fn term(digits: &str, kind: &str, text: &str) -> Result<u32, String> {
    if digits.is_empty() {
        return Err(format!("{kind} \"{text}\" is missing a term"));
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0'))
    {
        return Err(format!(
            "{kind} \"{text}\": \"{digits}\" is not a whole number"
        ));
    }
    digits
        .parse()
        .map_err(|_| format!("{kind} \"{text}\": {digits} is too large"))
}

impl fmt::Display for CropRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CropRequest::Aspect { w, h } => write!(f, "{w}:{h}"),
            CropRequest::Size { width, height } => write!(f, "{width}x{height}"),
        }
    }
}

impl Serialize for CropRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CropRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for CropRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^\s*[1-9][0-9]{0,4}[:x][1-9][0-9]{0,4}\s*$"))
            .description(Some(
                "An aspect ratio (\"16:9\") or a size in pixels (\"300x200\"), each term \
                 at most 65535, at most 10:1 either way",
            ))
            .examples([serde_json::json!("16:9")])
            .into()
    }
}

impl utoipa::ToSchema for CropRequest {}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<CropRequest, String> {
        s.parse()
    }

    fn aspect(w: u32, h: u32) -> CropRequest {
        CropRequest::Aspect { w, h }
    }

    #[test]
    fn parses_ratios_and_sizes() {
        assert_eq!(parse("1:1"), Ok(aspect(1, 1)));
        assert_eq!(parse("16:9"), Ok(aspect(16, 9)));
        assert_eq!(parse("10:1"), Ok(aspect(10, 1)));
        assert_eq!(parse("1:10"), Ok(aspect(1, 10)));
        assert_eq!(
            parse("300x200"),
            Ok(CropRequest::Size {
                width: 300,
                height: 200
            })
        );
        assert_eq!(
            parse("65535x65535"),
            Ok(CropRequest::Size {
                width: 65535,
                height: 65535
            })
        );
        // Surrounding whitespace is trimmed, as lists are often written "1:1, 16:9".
        assert_eq!(parse(" 4:3 "), Ok(aspect(4, 3)));
        assert_eq!(
            parse("\t300x200\n").map(|r| r.to_string()),
            Ok("300x200".into())
        );
    }

    #[test]
    fn rejects_malformed_requests_saying_why() {
        let cases = [
            ("", "empty crop request"),
            ("   ", "empty crop request"),
            ("abc", "\"abc\" is neither an aspect ratio"),
            ("300X200", "neither an aspect ratio"),
            ("16:0", "aspect ratio \"16:0\": both terms must be positive"),
            ("0:0", "both terms must be positive"),
            ("0x10", "size \"0x10\": both terms must be positive"),
            ("11:1", "aspect ratio \"11:1\" is wider than 10:1"),
            ("1:11", "aspect ratio \"1:11\" is taller than 1:10"),
            ("2000x100", "size \"2000x100\" is wider than 10:1"),
            (
                "70000x7000",
                "size \"70000x7000\": 70000 is above the largest term, 65535",
            ),
            ("70000:7000", "70000 is above the largest term"),
            ("01:1", "\"01\" is not a whole number"),
            ("1:1:1", "aspect ratio \"1:1:1\" has more than one ':'"),
            ("1x1x1", "size \"1x1x1\" has more than one 'x'"),
            ("16:", "aspect ratio \"16:\" is missing a term"),
            ("x200", "size \"x200\" is missing a term"),
            ("1.5:1", "\"1.5\" is not a whole number"),
            ("+4:3", "\"+4\" is not a whole number"),
            ("-4:3", "\"-4\" is not a whole number"),
            ("4 : 3", "\"4 \" is not a whole number"),
            ("16:9x2", "\"9x2\" is not a whole number"),
            ("99999999999:1", "13 characters is too long"),
            (&"9".repeat(5000), "5000 characters is too long"),
        ];
        for (input, expected) in cases {
            let err = parse(input).expect_err(input);
            assert!(err.contains(expected), "{input:?}: {err:?}");
            let first = err.chars().next().unwrap();
            assert!(!first.is_uppercase(), "{input:?}: {err:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["1:1", "16:9", "9:16", "32:18", "300x200", "1x10"] {
            let request = parse(text).unwrap();
            assert_eq!(request.to_string(), text);
            assert_eq!(parse(&request.to_string()), Ok(request));
        }
    }

    #[test]
    fn requests_travel_as_their_text() {
        let request = parse("16:9").unwrap();
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(json, "\"16:9\"");
        assert_eq!(serde_json::from_str::<CropRequest>(&json).unwrap(), request);
        let err = serde_json::from_str::<CropRequest>("\"16:0\"").unwrap_err();
        assert!(
            err.to_string().contains("both terms must be positive"),
            "{err}"
        );
    }
}
