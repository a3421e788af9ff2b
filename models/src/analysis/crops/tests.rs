use super::*;
use crate::test_support::photo;
use image::Rgb;
use image::imageops::{self, FilterType};

fn parse(s: &str) -> Result<CropRequest, String> {
    s.parse()
}

fn aspect(w: u32, h: u32) -> CropRequest {
    CropRequest::Aspect { w, h }
}

/// A flat grey frame with a 60x60 red-and-yellow checkerboard at `(x, y)`.
fn scene(width: u32, height: u32, x: u32, y: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |px, py| {
        if (x..x + 60).contains(&px) && (y..y + 60).contains(&py) {
            if ((px - x) / 10 + (py - y) / 10).is_multiple_of(2) {
                Rgb([220, 30, 30])
            } else {
                Rgb([240, 220, 40])
            }
        } else {
            Rgb([128, 128, 128])
        }
    })
}

fn crop(img: &RgbImage, request: CropRequest) -> CropBox {
    suggest_crops(img, img.dimensions(), &[request])
        .pop()
        .unwrap()
        .unwrap_or_else(|e| panic!("{request}: {e}"))
}

fn contains(b: CropBox, x: u32, y: u32, w: u32, h: u32) -> bool {
    b.x <= x && b.y <= y && x + w <= b.x + b.width && y + h <= b.y + b.height
}

/// The box lies inside the frame and has the requested aspect within a pixel.
fn assert_well_formed(b: CropBox, frame: (u32, u32), (aw, ah): (u32, u32)) {
    assert!(b.width > 0 && b.height > 0, "{b:?}");
    assert!(
        b.x + b.width <= frame.0 && b.y + b.height <= frame.1,
        "{b:?} in {frame:?}"
    );
    let width_error = f64::from(b.width) - f64::from(b.height) * f64::from(aw) / f64::from(ah);
    let height_error = f64::from(b.height) - f64::from(b.width) * f64::from(ah) / f64::from(aw);
    assert!(
        width_error.abs() <= 1.0 || height_error.abs() <= 1.0,
        "{b:?} is not {aw}:{ah}"
    );
}

#[test]
fn square_crop_keeps_an_off_centre_object() {
    // Near the right edge of a 2:1 frame.
    let img = scene(400, 200, 320, 70);
    let b = crop(&img, aspect(1, 1));
    assert_well_formed(b, (400, 200), (1, 1));
    assert!(contains(b, 320, 70, 60, 60), "{b:?}");
    // Near the left edge of a 3:1 frame.
    let img = scene(600, 200, 15, 100);
    let b = crop(&img, aspect(1, 1));
    assert!(contains(b, 15, 100, 60, 60), "{b:?}");
    // Near the bottom of a tall frame.
    let img = scene(200, 500, 60, 420);
    for request in [aspect(1, 1), aspect(16, 9), aspect(4, 3)] {
        let b = crop(&img, request);
        assert!(contains(b, 60, 420, 60, 60), "{request}: {b:?}");
    }
}

#[test]
fn crops_keep_an_object_in_a_corner() {
    for (x, y) in [(0, 0), (340, 0), (0, 240), (340, 240)] {
        let img = scene(400, 300, x, y);
        for request in [aspect(1, 1), aspect(16, 9), aspect(9, 16), aspect(3, 1)] {
            let b = crop(&img, request);
            assert!(
                contains(b, x, y, 60, 60),
                "object at {x},{y}, {request}: {b:?}"
            );
        }
    }
}

#[test]
fn compact_subject_gets_a_closer_crop_spread_content_the_largest() {
    let img = scene(400, 200, 170, 70);
    let b = crop(&img, aspect(1, 1));
    assert!(b.height < 200, "a closer crop around a small object: {b:?}");
    assert!(contains(b, 170, 70, 60, 60), "{b:?}");

    // Texture everywhere: no part is worth zooming into.
    let busy = RgbImage::from_fn(400, 200, |x, y| {
        Rgb([
            (x * 37 % 256) as u8,
            (y * 59 % 256) as u8,
            ((x + y) * 11 % 256) as u8,
        ])
    });
    let b = crop(&busy, aspect(1, 1));
    assert_eq!((b.width, b.height), (200, 200));
}

#[test]
fn featureless_frame_gets_the_largest_centred_box() {
    let img = RgbImage::from_pixel(400, 200, Rgb([90, 90, 90]));
    let expected = CropBox {
        x: 100,
        y: 0,
        width: 200,
        height: 200,
    };
    assert_eq!(crop(&img, aspect(1, 1)), expected);
}

#[test]
fn reduced_frame_gives_the_box_in_original_coordinates() {
    let full = scene(400, 200, 320, 70);
    let quarter = imageops::resize(&full, 100, 50, FilterType::Triangle);
    for request in [aspect(1, 1), aspect(4, 3), aspect(3, 4)] {
        let from_full = crop(&full, request);
        let from_quarter = suggest_crops(&quarter, (400, 200), &[request])
            .remove(0)
            .unwrap();
        assert_well_formed(from_quarter, (400, 200), request.ratio());
        assert!(
            contains(from_quarter, 320, 70, 60, 60),
            "{request}: {from_quarter:?}"
        );
        let close = |a: u32, b: u32, side: u32| a.abs_diff(b) * 100 <= side * 5;
        assert!(
            close(from_full.x, from_quarter.x, 400)
                && close(from_full.y, from_quarter.y, 200)
                && close(from_full.width, from_quarter.width, 400)
                && close(from_full.height, from_quarter.height, 200),
            "{request}: {from_full:?} vs {from_quarter:?}"
        );
    }
}

#[test]
fn size_requests_are_at_least_that_size_or_say_the_image_is_smaller() {
    let img = scene(400, 200, 320, 70);
    let requests = [
        parse("500x100").unwrap(),
        parse("300x300").unwrap(),
        parse("300x200").unwrap(),
        parse("150x100").unwrap(),
        parse("64x48").unwrap(),
        parse("400x200").unwrap(),
    ];
    let answers = suggest_crops(&img, (400, 200), &requests);
    assert_eq!(
        answers[0],
        Err("the image is 400x200, smaller than 500x100".to_owned())
    );
    assert_eq!(
        answers[1],
        Err("the image is 400x200, smaller than 300x300".to_owned())
    );
    for (request, answer) in requests.iter().zip(&answers).skip(2) {
        let b = answer.clone().unwrap();
        let (w, h) = request.ratio();
        assert!(b.width >= w && b.height >= h, "{request}: {b:?}");
        assert_well_formed(b, (400, 200), (w, h));
    }
    assert_eq!(answers[2].clone().unwrap().height, 200);
    // Coordinates of the original, even when the frame was decoded smaller.
    let small = imageops::resize(&img, 50, 25, FilterType::Triangle);
    let answers = suggest_crops(&small, (400, 200), &requests);
    assert!(answers[0].is_err() && answers[2].is_ok());
    assert!(answers[4].clone().unwrap().width >= 64);
}

#[test]
fn boxes_are_exact_and_inside_for_awkward_sizes() {
    let requests: Vec<CropRequest> = [
        "1:1", "16:9", "9:16", "4:3", "3:4", "10:1", "1:10", "7:5", "21:9",
    ]
    .iter()
    .map(|s| parse(s).unwrap())
    .collect();
    for (frame, decoded) in [
        ((451, 300), (451, 300)),
        ((741, 500), (93, 63)),
        ((4000, 3000), (500, 375)),
        ((3, 2), (3, 2)),
        ((1, 1), (1, 1)),
        ((1, 900), (1, 900)),
    ] {
        let img = RgbImage::from_fn(decoded.0, decoded.1, |x, y| {
            Rgb([(x * 7 % 256) as u8, (y * 13 % 256) as u8, 90])
        });
        for (request, answer) in requests.iter().zip(suggest_crops(&img, frame, &requests)) {
            let b = answer.unwrap();
            assert!(
                b.x + b.width <= frame.0 && b.y + b.height <= frame.1,
                "{b:?}"
            );
            assert!(b.width > 0 && b.height > 0);
            // Exact where the frame leaves room for the aspect's smaller side.
            if frame.0.min(frame.1) >= 10 {
                assert_well_formed(b, frame, request.ratio());
            }
        }
    }
}

#[test]
fn thin_strips_keep_the_aspect_as_far_as_a_pixel_allows() {
    let strip = RgbImage::from_fn(9, 600, |_, y| Rgb([(y % 256) as u8, 40, 200]));
    let b = crop(&strip, aspect(10, 1));
    assert_eq!((b.x, b.width, b.height), (0, 9, 1), "{b:?}");
    let wide = RgbImage::from_fn(600, 3, |x, _| Rgb([(x % 256) as u8, 40, 200]));
    let b = crop(&wide, aspect(1, 10));
    assert_eq!((b.width, b.height), (1, 3), "{b:?}");
}

#[test]
fn empty_images_are_errors_not_panics() {
    let requests = [aspect(1, 1), parse("10x10").unwrap()];
    let answers = suggest_crops(&RgbImage::new(0, 0), (0, 0), &requests);
    assert_eq!(answers, vec![Err("the image is empty (0x0)".to_owned()); 2]);
    let answers = suggest_crops(&RgbImage::new(10, 10), (10, 0), &requests);
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().unwrap_err().contains("empty"))
    );
    let answers = suggest_crops(&RgbImage::new(0, 7), (640, 480), &requests);
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().unwrap_err().contains("empty"))
    );
    assert!(suggest_crops(&RgbImage::new(10, 10), (10, 10), &[]).is_empty());
}

#[test]
fn answers_each_request_in_order_up_to_the_limit() {
    let img = scene(400, 200, 320, 70);
    let requests: Vec<CropRequest> = (1..=MAX_CROPS as u32 + 2)
        .map(|h| aspect(1, h.min(10)))
        .collect();
    let answers = suggest_crops(&img, (400, 200), &requests);
    assert_eq!(answers.len(), requests.len());
    for (i, answer) in answers.iter().enumerate() {
        if i < MAX_CROPS {
            assert_well_formed(answer.clone().unwrap(), (400, 200), requests[i].ratio());
        } else {
            assert_eq!(answer, &Err(format!("at most {MAX_CROPS} crops per image")));
        }
    }
}

/// Asserts that each request's crop of photo `name` covers at least 80% of the area of
/// the subject box `(x, y, width, height)`, in the photo's pixels.
fn assert_keeps_subject(name: &str, subject: (u32, u32, u32, u32), requests: &[&str]) {
    let img = photo(name);
    assert_crops_cover(name, &img, (0, 0), subject, requests);
}

/// Like [`assert_keeps_subject`], on the part `(x, y, width, height)` of the photo only,
/// so that the subject is off-centre; `subject` is still in the photo's pixels.
fn assert_keeps_reframed_subject(
    name: &str,
    (x, y, width, height): (u32, u32, u32, u32),
    subject: (u32, u32, u32, u32),
    requests: &[&str],
) {
    let img = imageops::crop_imm(&photo(name), x, y, width, height).to_image();
    assert_crops_cover(name, &img, (x, y), subject, requests);
}

/// Crops `img`, which lies at `offset` in the photo, and compares with `subject`.
fn assert_crops_cover(
    name: &str,
    img: &RgbImage,
    offset: (u32, u32),
    subject: (u32, u32, u32, u32),
    requests: &[&str],
) {
    let requests: Vec<CropRequest> = requests.iter().map(|r| parse(r).unwrap()).collect();
    let answers = suggest_crops(img, img.dimensions(), &requests);
    for (request, answer) in requests.iter().zip(answers) {
        let b = answer.unwrap();
        assert_well_formed(b, img.dimensions(), request.ratio());
        let (x, y) = (offset.0 + b.x, offset.1 + b.y);
        let (sx, sy, sw, sh) = subject;
        let across = (sx + sw).min(x + b.width).saturating_sub(sx.max(x));
        let down = (sy + sh).min(y + b.height).saturating_sub(sy.max(y));
        let covered = f64::from(across * down) / f64::from(sw * sh);
        assert!(
            covered >= 0.8,
            "{name} {request}: {b:?} covers {covered:.2} of {subject:?}"
        );
    }
}

#[test]
fn photo_reframed_off_centre() {
    // The rocket near the left edge, then near the right edge (a centred 9:16 crop
    // would cut it), then the cup near each edge.
    let rocket = (305, 127, 32, 300);
    assert_keeps_reframed_subject("rocket.jpg", (250, 0, 390, 427), rocket, &["9:16", "1:2"]);
    assert_keeps_reframed_subject("rocket.jpg", (0, 0, 390, 427), rocket, &["9:16", "1:2"]);
    let cup = (172, 18, 252, 307);
    assert_keeps_reframed_subject("coffee.png", (0, 0, 470, 400), cup, &["9:16"]);
    assert_keeps_reframed_subject("coffee.png", (130, 0, 470, 400), cup, &["9:16"]);
}

#[test]
fn photo_cat() {
    // The cat's eyes, nose and mouth; the face fills the frame.
    assert_keeps_subject("chelsea.png", (130, 75, 220, 205), &["1:1", "16:9", "4:3"]);
}

#[test]
fn photo_coffee() {
    // The cup, with its handle and the spoon, on a saucer on a wooden table.
    assert_keeps_subject("coffee.png", (172, 18, 252, 307), &["1:1", "16:9", "9:16"]);
}

#[test]
fn photo_motorcycle() {
    // The motorcycle, rear light to front tyre and mirror to tyres, in a cluttered garage.
    assert_keeps_subject(
        "motorcycle_left.png",
        (92, 80, 593, 372),
        &["1:1", "16:9", "4:3"],
    );
}

#[test]
fn photo_horse() {
    // The silhouette, tail to nose and ears to hooves.
    assert_keeps_subject("horse.png", (18, 9, 371, 303), &["1:1", "4:3"]);
}

#[test]
fn photo_rocket() {
    // The rocket on its pad, between lit launch towers.
    assert_keeps_subject("rocket.jpg", (305, 127, 32, 300), &["1:1", "16:9", "9:16"]);
}

#[test]
fn photo_portrait() {
    // Grace Hopper's head, cap to chin, in front of a flag.
    assert_keeps_subject(
        "grace_hopper.jpg",
        (152, 22, 220, 290),
        &["1:1", "16:9", "9:16"],
    );
}

#[test]
fn photo_astronaut() {
    // The astronaut, hair to the bottom of the frame.
    assert_keeps_subject("astronaut.png", (20, 15, 345, 497), &["1:1"]);
    // Her face with its hair.
    assert_keeps_subject("astronaut.png", (152, 15, 150, 163), &["9:16"]);
}

#[test]
fn photo_decoded_at_an_eighth_gives_nearly_the_same_boxes() {
    let full = photo("motorcycle_left.png");
    let (w, h) = full.dimensions();
    let eighth = imageops::resize(&full, w.div_ceil(8), h.div_ceil(8), FilterType::Triangle);
    let requests = [aspect(1, 1), aspect(16, 9), aspect(9, 16)];
    let from_full = suggest_crops(&full, (w, h), &requests);
    let from_eighth = suggest_crops(&eighth, (w, h), &requests);
    for ((request, a), b) in requests.iter().zip(from_full).zip(from_eighth) {
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_well_formed(b, (w, h), request.ratio());
        let overlap = a.x.max(b.x).abs_diff((a.x + a.width).min(b.x + b.width))
            * a.y.max(b.y).abs_diff((a.y + a.height).min(b.y + b.height));
        let iou = f64::from(overlap) / f64::from(a.width * a.height + b.width * b.height - overlap);
        assert!(iou > 0.8, "{request}: {a:?} vs {b:?}");
    }
}
