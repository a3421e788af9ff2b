//! The job spec users send (`POST /v1/jobs`, and inside schedules), and its validation.
//! Every refusal names the field at fault and why, so a 400 is actionable.

use serde::{Deserialize, Serialize};
use tagfleet_contracts::S3Location;
pub use tagfleet_contracts::manifest::ManifestFormat;
use tagfleet_contracts::schema::{Analysis, TaskOptions};
use utoipa::ToSchema;

/// What to analyse and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Where the images are.
    pub source: Source,
    /// Analyses to run on every image.
    #[serde(default = "default_analyses")]
    pub analyses: Vec<Analysis>,
    /// `name@version` of the model; default: the first model the scheduler serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub options: TaskOptions,
    /// Your own location for the results, `s3://bucket/prefix/` (the workers need write
    /// access). With `options.retain: false` results go only there; otherwise also to
    /// the service's store, for `GET /v1/jobs/{id}/results`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub output: Option<S3Location>,
}

fn default_analyses() -> Vec<Analysis> {
    vec![Analysis::Tags]
}

/// Where a job's images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// Every object under an S3 prefix (`s3://bucket/prefix/`) whose name ends in one of
    /// `suffixes` (default: the image suffixes .jpg .jpeg .png .webp .gif .bmp .tif .tiff).
    S3Prefix {
        uri: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        suffixes: Vec<String>,
    },
    /// A manifest of refs: one per line, JSON Lines with a `ref` field, or CSV with a
    /// `ref` column. Either stored in S3 (`uri`) or sent in the request (`inline`).
    Manifest {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uri: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inline: Option<String>,
        #[serde(default)]
        format: ManifestFormat,
    },
    /// https URLs. Hosts that resolve to loopback, link-local, private or metadata
    /// addresses are refused unless the operator allowed their range.
    Urls { urls: Vec<String> },
    /// A local folder: only `tagfleet run` (the embedded mode) reads folders.
    Dir { path: String },
}

/// Why a request was refused: the field and the reason, and the valid values when the
/// choice is closed.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, ToSchema)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid: Option<Vec<String>>,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
            valid: None,
        }
    }

    pub fn with_valid(mut self, valid: Vec<String>) -> Self {
        self.valid = Some(valid);
        self
    }
}

/// Parses a JSON body, naming the field at fault when it does not fit `T`.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Invalid> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." || path == "?" || path.is_empty() {
            "body".to_owned()
        } else {
            path
        };
        let mut invalid = Invalid::new(field, strip_position(&inner.to_string()));
        if invalid.reason.contains("unknown variant") && invalid.field.starts_with("analyses") {
            invalid.valid = Some(Analysis::ALL.iter().map(|a| a.name().to_owned()).collect());
        }
        invalid
    })
}

/// serde_json appends " at line 1 column 57"; the field path says more.
fn strip_position(reason: &str) -> String {
    match reason.rfind(" at line ") {
        Some(i) => reason[..i].to_owned(),
        None => reason.to_owned(),
    }
}

impl JobSpec {
    /// Checks what parsing cannot: choices against what this scheduler serves, option
    /// ranges, and the shape of the source. Returns the model to run.
    /// `categorizers` are those the workers have (`options.categorizer` must be one).
    pub fn validate(&self, models: &[String], categorizers: &[String]) -> Result<String, Invalid> {
        if self.analyses.is_empty() {
            return Err(Invalid::new("analyses", "asks for no analysis")
                .with_valid(Analysis::ALL.iter().map(|a| a.name().to_owned()).collect()));
        }
        let model = match &self.model {
            None => models
                .first()
                .cloned()
                .ok_or_else(|| Invalid::new("model", "this scheduler serves no model"))?,
            Some(m) if models.contains(m) => m.clone(),
            Some(m) => {
                return Err(Invalid::new("model", format!("unknown model {m:?}"))
                    .with_valid(models.to_vec()));
            }
        };
        self.options.validate().map_err(|e| match e {
            tagfleet_contracts::schema::SchemaError::Option { field, reason } => {
                Invalid::new(format!("options.{field}"), reason)
            }
            other => Invalid::new("options", other.to_string()),
        })?;
        if !categorizers.contains(&self.options.categorizer) {
            return Err(Invalid::new(
                "options.categorizer",
                format!("unknown categorizer {:?}", self.options.categorizer),
            )
            .with_valid(categorizers.to_vec()));
        }
        match &self.source {
            Source::S3Prefix { uri, suffixes } => {
                S3Location::parse(uri).map_err(|e| Invalid::new("source.uri", e.to_string()))?;
                if suffixes.iter().any(|s| s.is_empty()) {
                    return Err(Invalid::new("source.suffixes", "an empty suffix"));
                }
            }
            Source::Manifest { uri, inline, .. } => match (uri, inline) {
                (Some(_), Some(_)) => {
                    return Err(Invalid::new(
                        "source",
                        "a manifest has either `uri` or `inline`, not both",
                    ));
                }
                (None, None) => {
                    return Err(Invalid::new(
                        "source",
                        "a manifest needs `uri` (s3://bucket/key) or `inline` (its text)",
                    ));
                }
                (Some(uri), None) => {
                    S3Location::parse_object(uri)
                        .map_err(|e| Invalid::new("source.uri", e.to_string()))?;
                }
                (None, Some(_)) => {}
            },
            Source::Urls { urls } => {
                if urls.is_empty() {
                    return Err(Invalid::new("source.urls", "no URLs"));
                }
            }
            Source::Dir { .. } => {
                return Err(Invalid::new(
                    "source.kind",
                    "a local folder is read only in the embedded mode (`tagfleet run DIR`); \
                     upload it to S3 or send a manifest",
                )
                .with_valid(vec![
                    "s3_prefix".into(),
                    "manifest".into(),
                    "urls".into(),
                ]));
            }
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Vec<String> {
        vec!["efficientnet-lite0@1".into()]
    }

    fn categorizers() -> Vec<String> {
        vec!["general".into(), "retail".into()]
    }

    fn refusal(body: &str) -> Invalid {
        match parse::<JobSpec>(body.as_bytes()) {
            Err(e) => e,
            Ok(spec) => spec.validate(&models(), &categorizers()).unwrap_err(),
        }
    }

    #[test]
    fn a_minimal_spec_takes_the_defaults() {
        let spec: JobSpec =
            parse(br#"{"source":{"kind":"s3_prefix","uri":"s3://media/2026/"}}"#).unwrap();
        assert_eq!(spec.analyses, vec![Analysis::Tags]);
        assert_eq!(spec.options, TaskOptions::default());
        assert_eq!(
            spec.validate(&models(), &categorizers()).unwrap(),
            "efficientnet-lite0@1"
        );
    }

    #[test]
    fn every_refusal_names_its_field() {
        let cases = [
            (r#"{"analyses":["tags"]}"#, "body", "missing field `source`"),
            (r#"not json"#, "body", "expected"),
            (
                r#"{"source":{"kind":"ftp","uri":"x"}}"#,
                "source.kind",
                "unknown variant `ftp`",
            ),
            (
                r#"{"source":{"kind":"urls","urls":["https://a.example/x.jpg"]},"analyses":["faces"]}"#,
                "analyses[0]",
                "unknown variant `faces`",
            ),
            (
                r#"{"source":{"kind":"urls","urls":["https://a.example/x.jpg"]},"options":{"top_k":"five"}}"#,
                "options.top_k",
                "invalid type",
            ),
            (
                r#"{"source":{"kind":"urls","urls":["https://a.example/x.jpg"]},"options":{"top_k":0}}"#,
                "options.top_k",
                "outside",
            ),
            (
                r#"{"source":{"kind":"urls","urls":["https://a.example/x.jpg"]},"model":"resnet@9"}"#,
                "model",
                "unknown model",
            ),
            (
                r#"{"source":{"kind":"urls","urls":[]}}"#,
                "source.urls",
                "no URLs",
            ),
            (
                r#"{"source":{"kind":"s3_prefix","uri":"media/2026"}}"#,
                "source.uri",
                "expected s3://",
            ),
            (r#"{"source":{"kind":"manifest"}}"#, "source", "needs `uri`"),
            (
                r#"{"source":{"kind":"dir","path":"/photos"}}"#,
                "source.kind",
                "embedded mode",
            ),
            (
                r#"{"source":{"kind":"urls","urls":["https://a.example/x.jpg"]},"colour":1}"#,
                "colour",
                "unknown field `colour`",
            ),
            (
                r#"{"source":{"kind":"urls","urls":["https://a.example/x.jpg"]},"options":{"crops":["16:0"]}}"#,
                "options.crops[0]",
                "both terms must be positive",
            ),
            (
                r#"{"source":{"kind":"urls","urls":["https://a.example/x.jpg"]},"options":{"colors":40}}"#,
                "options.colors",
                "outside 1..=16",
            ),
            (
                r#"{"source":{"kind":"urls","urls":["https://a.example/x.jpg"]},"options":{"categorizer":"pets"}}"#,
                "options.categorizer",
                "unknown categorizer \"pets\"",
            ),
            (
                r#"{"source":{"kind":"urls","urls":["https://a.example/x.jpg"]},"options":{"categorizer":"../../x"}}"#,
                "options.categorizer",
                "not a categorizer name",
            ),
        ];
        for (body, field, reason) in cases {
            let e = refusal(body);
            assert_eq!(e.field, field, "{body}: {e}");
            assert!(e.reason.contains(reason), "{body}: {e}");
        }
    }

    #[test]
    fn closed_choices_list_the_valid_values() {
        let e = refusal(
            r#"{"source":{"kind":"urls","urls":["https://a.example/x.jpg"]},"analyses":["faces"]}"#,
        );
        assert_eq!(
            e.valid.unwrap(),
            vec!["tags", "embedding", "categories", "colors", "crops"]
        );
        let e = refusal(
            r#"{"source":{"kind":"urls","urls":["https://a.example/x.jpg"]},"options":{"categorizer":"pets"}}"#,
        );
        assert_eq!(e.valid.unwrap(), categorizers());
        let e = refusal(
            r#"{"source":{"kind":"urls","urls":["https://a.example/x.jpg"]},"model":"resnet@9"}"#,
        );
        assert_eq!(e.valid.unwrap(), models());
    }
}
