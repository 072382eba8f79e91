//! Lambda events in, Lambda responses out: the edges of the service core.
//!
//! Recognises direct invokes, API Gateway REST (v1) and HTTP API (v2) proxy events, Lambda
//! Function URLs and ALB target events, using the `aws_lambda_events` types. HTTP-style events get
//! proxy responses (`statusCode`, `headers`, `body`) whatever happens, errors included, with the
//! status of the error type and a message that names no server paths; direct invokes return the
//! response itself or fail, so that Lambda reports a function error whose `errorType` is ours.

use aws_lambda_events::alb::{AlbTargetGroupRequest, AlbTargetGroupResponse};
use aws_lambda_events::apigw::{
    ApiGatewayProxyRequest, ApiGatewayProxyResponse, ApiGatewayV2httpRequest,
    ApiGatewayV2httpResponse,
};
use aws_lambda_events::encodings::Body as EventBody;
use aws_lambda_events::http::{HeaderMap, HeaderValue};
use aws_lambda_events::query_map::QueryMap;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{contain, Error, ErrorKind, Result};
use crate::limits::Limits;
use crate::service::{Payload, Request, Response, Service};
use crate::tensor::{check_fills, Scalar};
use crate::text::TextSource;

/// Where an event came from; decides the response shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `lambda invoke` / SDK `Invoke` with the design's JSON.
    Direct,
    /// API Gateway REST API proxy integration (payload v1).
    ApiGatewayV1,
    /// API Gateway HTTP API (payload v2).
    ApiGatewayV2,
    /// Lambda Function URL (payload v2 format).
    FunctionUrl,
    /// Application Load Balancer target; `multi_value` when the target group sends
    /// multi-value headers (the response must then use them too).
    Alb {
        /// Whether the request used `multiValueHeaders`.
        multi_value: bool,
    },
}

impl Source {
    /// Name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            Source::Direct => "direct",
            Source::ApiGatewayV1 => "apigw-v1",
            Source::ApiGatewayV2 => "apigw-v2",
            Source::FunctionUrl => "function-url",
            Source::Alb { .. } => "alb",
        }
    }

    /// Recognises an event by the fields only its source sends.
    pub fn of(event: &Value) -> Source {
        let context = event.get("requestContext");
        let has = |v: Option<&Value>, key: &str| v.and_then(|v| v.get(key)).is_some();
        if has(context, "elb") {
            Source::Alb {
                multi_value: event.get("multiValueHeaders").is_some_and(Value::is_object),
            }
        } else if event.get("version").and_then(Value::as_str) == Some("2.0")
            && has(context, "http")
        {
            let domain = context
                .and_then(|c| c.get("domainName"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if domain.contains(".lambda-url.") {
                Source::FunctionUrl
            } else {
                Source::ApiGatewayV2
            }
        } else if event.get("httpMethod").is_some() && context.is_some() {
            Source::ApiGatewayV1
        } else {
            Source::Direct
        }
    }

    /// Whether the caller expects a proxy response.
    pub fn is_http(self) -> bool {
        self != Source::Direct
    }
}

/// The result of one event: its source and the service's answer, before it is shaped for Lambda.
#[derive(Debug)]
pub struct Outcome {
    /// Where the event came from.
    pub source: Source,
    /// The service's response or error.
    pub result: Result<Response>,
}

/// Runs one Lambda event through the service and logs it (one JSON line with `request_id`,
/// whichever handler called). A panic anywhere in it becomes this event's `InternalError` (for
/// HTTP events, a 500 proxy response), never the handler's.
pub fn handle(service: &Service, event: Value, request_id: &str) -> Outcome {
    let source = Source::of(&event);
    let limits = service.config().limits;
    let result =
        contain(|| parse_as(source, event, &limits).and_then(|request| service.handle(request)));
    let outcome = Outcome { source, result };
    outcome.log(request_id);
    outcome
}

/// Turns an event into the service's request, checking the payload limits on the way: what
/// [`handle`] does before any model is involved.
pub fn parse(event: Value, limits: &Limits) -> (Source, Result<Request>) {
    let source = Source::of(&event);
    (source, parse_as(source, event, limits))
}

impl Outcome {
    /// The request's log line: `info` when answered, `warn` for the caller's errors (4xx),
    /// `error` for the function's (5xx), with the full message the caller may not see.
    fn log(&self, request_id: &str) {
        let source = self.source.name();
        match &self.result {
            Ok(response) => tracing::info!(
                request_id,
                source,
                model = %response.model,
                decode_ms = response.timings.decode,
                preprocess_ms = response.timings.preprocess,
                inference_ms = response.timings.inference,
                total_ms = response.timings.total,
                "request"
            ),
            Err(err) if err.kind().is_client_error() => tracing::warn!(
                request_id,
                source,
                error_type = err.kind().name(),
                error = %err,
                "request failed"
            ),
            Err(err) => tracing::error!(
                request_id,
                source,
                error_type = err.kind().name(),
                error = %err,
                "request failed"
            ),
        }
    }

    /// What the handler returns to Lambda, as a JSON value: for HTTP-style events always a proxy
    /// response; for direct invokes the response, or the error for Lambda to report as a
    /// function error. (The handlers serialize [`Outcome::into_reply`] instead.)
    pub fn reply(self) -> Result<Value> {
        self.into_reply().map(|reply| match reply {
            Reply::Direct(response) => to_json(&response),
            Reply::Proxy(proxy) => proxy,
        })
    }

    /// [`Outcome::reply`] with a direct invoke's response left as it is, for a caller that
    /// serializes it once into its own objects: the Python binding into Python's, the native
    /// handler into the JSON it posts (a JSON value in between cost 0.08-0.1 ms for 32
    /// classifications).
    pub fn into_reply(self) -> Result<Reply> {
        let (status, body) = match (self.result, self.source.is_http()) {
            (Ok(response), false) => return Ok(Reply::Direct(response)),
            (Err(err), false) => return Err(err),
            (Ok(response), true) => (200, json_text(&response)),
            (Err(err), true) => (
                err.kind().http_status(),
                error_body(err.kind().name(), &err.public_message()).to_string(),
            ),
        };
        Ok(Reply::Proxy(proxy_response(self.source, status, body)))
    }
}

/// A handler's answer: a direct invoke's response, or an HTTP-style event's proxy response.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// A direct invoke's response, serialized as the design's JSON.
    Direct(Response),
    /// An API Gateway, Function URL or ALB response whose body is that JSON or the error.
    Proxy(Value),
}

fn to_json(response: &Response) -> Value {
    // A Response holds only strings, numbers and lists, so this cannot fail; if it ever did, the
    // caller still gets an error body rather than a panic.
    serde_json::to_value(response).unwrap_or_else(|err| serialization_failed(&err))
}

/// [`to_json`] as the text of a proxy response's body, without a `Value` in between.
fn json_text(response: &Response) -> String {
    serde_json::to_string(response).unwrap_or_else(|err| serialization_failed(&err).to_string())
}

fn serialization_failed(err: &serde_json::Error) -> Value {
    error_body(ErrorKind::InternalError.name(), &err.to_string())
}

/// The design's error body: `{"error": {"type": ..., "message": ...}}`.
fn error_body(error_type: &str, message: &str) -> Value {
    serde_json::json!({"error": {"type": error_type, "message": message}})
}

fn proxy_response(source: Source, status: u16, body: String) -> Value {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let status_code = i64::from(status);
    let body = Some(EventBody::Text(body));
    let response = match source {
        Source::ApiGatewayV1 => {
            let mut r = ApiGatewayProxyResponse::default();
            (r.status_code, r.headers, r.body) = (status_code, headers, body);
            serde_json::to_value(r)
        }
        Source::Alb { multi_value } => {
            let mut r = AlbTargetGroupResponse::default();
            r.status_code = status_code;
            r.status_description = Some(format!("{status} {}", reason(status)));
            if multi_value {
                r.multi_value_headers = headers;
            } else {
                r.headers = headers;
            }
            r.body = body;
            serde_json::to_value(r)
        }
        Source::ApiGatewayV2 | Source::FunctionUrl | Source::Direct => {
            let mut r = ApiGatewayV2httpResponse::default();
            (r.status_code, r.headers, r.body) = (status_code, headers, body);
            serde_json::to_value(r)
        }
    };
    response.unwrap_or_else(|_| serde_json::json!({"statusCode": status}))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Payload Too Large",
        _ => "Internal Server Error",
    }
}

/// The parts of an HTTP-style event the service needs.
struct HttpParts {
    path: Option<String>,
    query_model: Option<String>,
    query_top_k: Option<String>,
    content_type: Option<String>,
    body: Option<String>,
    is_base64_encoded: bool,
}

impl HttpParts {
    fn new(
        path: Option<String>,
        query: &QueryMap,
        headers: &HeaderMap,
        body: Option<String>,
        is_base64_encoded: bool,
    ) -> HttpParts {
        HttpParts {
            path,
            query_model: query.first("model").map(str::to_owned),
            query_top_k: query.first("top_k").map(str::to_owned),
            content_type: headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_ascii_lowercase),
            body,
            is_base64_encoded,
        }
    }
}

fn event_of<T: serde::de::DeserializeOwned>(event: Value, what: &str) -> Result<T> {
    serde_json::from_value(event)
        .map_err(|err| Error::invalid_input(format!("malformed {what} event: {err}")))
}

fn parse_as(source: Source, event: Value, limits: &Limits) -> Result<Request> {
    let parts = match source {
        Source::Direct => return parse_direct(event, limits),
        Source::ApiGatewayV1 => {
            let e: ApiGatewayProxyRequest = event_of(event, "API Gateway")?;
            let query = &e.query_string_parameters;
            HttpParts::new(e.path, query, &e.headers, e.body, e.is_base64_encoded)
        }
        Source::ApiGatewayV2 | Source::FunctionUrl => {
            let e: ApiGatewayV2httpRequest = event_of(event, "HTTP API")?;
            let query = &e.query_string_parameters;
            HttpParts::new(e.raw_path, query, &e.headers, e.body, e.is_base64_encoded)
        }
        Source::Alb { .. } => {
            // A target group sends either single-value or multi-value headers and queries.
            let e: AlbTargetGroupRequest = event_of(event, "ALB")?;
            let headers = if e.headers.is_empty() {
                &e.multi_value_headers
            } else {
                &e.headers
            };
            let query = if e.query_string_parameters.is_empty() {
                &e.multi_value_query_string_parameters
            } else {
                &e.query_string_parameters
            };
            HttpParts::new(e.path, query, headers, e.body, e.is_base64_encoded)
        }
    };
    parse_http(parts, limits)
}

fn parse_http(parts: HttpParts, limits: &Limits) -> Result<Request> {
    let body = parts.body.unwrap_or_default();
    if body.is_empty() {
        return Err(Error::invalid_input(
            "the request has no body: send an image (Content-Type: image/jpeg, ...) or the JSON \
             request",
        ));
    }
    limits.check_payload(body.len())?;
    let bytes = if parts.is_base64_encoded {
        decode_base64(&body, "the request body")?
    } else {
        body.into_bytes()
    };
    let content_type = parts.content_type.unwrap_or_default();
    let is_text = content_type.starts_with("text/plain");
    let is_json = !is_text && content_type.starts_with("application/json")
        || (!content_type.starts_with("image/")
            && bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'));
    let mut request = if is_json {
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|err| Error::invalid_input(format!("the body is not valid JSON: {err}")))?;
        parse_direct(json, limits)?
    } else if is_text {
        check_charset(&content_type)?;
        limits.check_text_bytes(bytes.len())?;
        Request {
            model: None,
            payload: Payload::Text(TextSource::from_utf8(bytes)?),
            top_k: None,
        }
    } else {
        Request {
            model: None,
            payload: Payload::Image(bytes),
            top_k: None,
        }
    };
    if request.model.is_none() {
        request.model = parts
            .query_model
            .or_else(|| model_from_path(parts.path.as_deref()));
    }
    if request.top_k.is_none() {
        if let Some(value) = parts.query_top_k {
            let top_k = value.trim().parse::<i64>().map_err(|_| {
                Error::invalid_input(format!("top_k must be an integer, got {value:?}"))
            })?;
            request.top_k = Some(top_k);
        }
    }
    Ok(request)
}

/// A `text/plain` body must be UTF-8: a `charset` parameter, when given, must say so.
fn check_charset(content_type: &str) -> Result<()> {
    let charset = content_type
        .split(';')
        .skip(1)
        .filter_map(|param| param.split_once('='))
        .find(|(name, _)| name.trim() == "charset")
        .map(|(_, value)| value.trim().trim_matches('"'));
    match charset {
        None | Some("utf-8" | "utf8" | "us-ascii") => Ok(()),
        Some(other) => Err(Error::invalid_input(format!(
            "a text/plain body must be UTF-8, this one says charset={other}"
        ))),
    }
}

/// `.../models/<name>` (with or without a trailing slash) names a model.
fn model_from_path(path: Option<&str>) -> Option<String> {
    let path = path?.trim_end_matches('/');
    let (prefix, name) = path.rsplit_once('/')?;
    (prefix.ends_with("/models") || prefix == "models")
        .then(|| name.to_owned())
        .filter(|name| !name.is_empty())
}

fn decode_base64(text: &str, what: &str) -> Result<Vec<u8>> {
    let engine = &base64::engine::general_purpose::STANDARD;
    let compact: String;
    let text = if text.bytes().any(|b| b.is_ascii_whitespace()) {
        compact = text.split_ascii_whitespace().collect();
        &compact
    } else {
        text
    };
    engine
        .decode(text)
        .map_err(|err| Error::invalid_input(format!("{what} is not valid base64: {err}")))
}

/// The design's direct-invoke request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    images: Option<Vec<String>>,
    #[serde(default)]
    tensor: Option<TensorRequest>,
    #[serde(default)]
    text: Option<TextField>,
    #[serde(default)]
    texts: Option<Vec<TextField>>,
    #[serde(default)]
    top_k: Option<i64>,
}

/// A text, or a pair of texts for pair models.
#[derive(Deserialize)]
#[serde(untagged)]
enum TextField {
    Single(String),
    Pair([String; 2]),
}

impl TextField {
    fn into_source(self, limits: &Limits) -> Result<TextSource> {
        let source = match self {
            TextField::Single(text) => TextSource::Single(text),
            TextField::Pair([first, second]) => TextSource::Pair(first, second),
        };
        match &source {
            TextSource::Single(text) => limits.check_text_bytes(text.len())?,
            TextSource::Pair(first, second) => {
                limits.check_text_bytes(first.len())?;
                limits.check_text_bytes(second.len())?;
            }
        }
        Ok(source)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorRequest {
    shape: Vec<usize>,
    data: Vec<Scalar>,
}

fn parse_direct(event: Value, limits: &Limits) -> Result<Request> {
    if !event.is_object() {
        return Err(Error::invalid_input(format!(
            "expected a JSON object with \"image\", \"images\" or \"tensor\", got {}",
            json_type(&event)
        )));
    }
    // Sizes are checked on the JSON already in memory, before typed copies are made of it.
    let length = |pointer: &str| {
        event
            .pointer(pointer)
            .and_then(Value::as_array)
            .map(Vec::len)
    };
    if let Some(elements) = length("/tensor/data") {
        limits.check_tensor_elements(elements)?;
    }
    if let Some(texts) = length("/texts") {
        limits.check_text_count(texts)?;
    }
    if let Some(images) = length("/images").filter(|&n| n > limits.max_batch) {
        return Err(Error::invalid_input(format!(
            "a batch of {images} inputs is over the limit of {} (LAMBDATORCH_MAX_BATCH)",
            limits.max_batch
        )));
    }
    let direct: DirectRequest = serde_path_to_error::deserialize(event).map_err(|err| {
        let field = err.path().to_string();
        let inner = err.into_inner();
        if field == "." {
            Error::invalid_input(format!("invalid request: {inner}"))
        } else {
            Error::invalid_input(format!("invalid request field `{field}`: {inner}"))
        }
    })?;
    let given = [
        direct.image.is_some(),
        direct.images.is_some(),
        direct.tensor.is_some(),
        direct.text.is_some(),
        direct.texts.is_some(),
    ];
    if given.iter().filter(|&&g| g).count() > 1 {
        return Err(Error::invalid_input(
            "send only one of \"image\", \"images\", \"tensor\", \"text\" and \"texts\"",
        ));
    }
    if let Some(text) = direct.text {
        return Ok(Request {
            model: direct.model,
            payload: Payload::Text(text.into_source(limits)?),
            top_k: direct.top_k,
        });
    }
    if let Some(texts) = direct.texts {
        let texts = texts
            .into_iter()
            .map(|text| text.into_source(limits))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Request {
            model: direct.model,
            payload: Payload::Texts(texts),
            top_k: direct.top_k,
        });
    }
    let payload = match (direct.image, direct.images, direct.tensor) {
        (Some(image), None, None) => {
            limits.check_payload(image.len())?;
            Payload::Image(decode_base64(&image, "\"image\"")?)
        }
        (None, Some(images), None) => {
            limits.check_payload(images.iter().map(String::len).sum())?;
            let images = images
                .iter()
                .enumerate()
                .map(|(i, image)| decode_base64(image, &format!("\"images\"[{i}]")))
                .collect::<Result<Vec<_>>>()?;
            Payload::Images(images)
        }
        (None, None, Some(TensorRequest { shape, data })) => {
            check_fills(&shape, data.len())?;
            Payload::Tensor { shape, data }
        }
        (None, None, None) => return Err(Error::invalid_input(
            "the request has no input: send \"image\" (base64), \"images\" (a list of base64), \
                 \"tensor\" ({\"shape\": [...], \"data\": [...]}), \"text\" or \"texts\"",
        )),
        _ => {
            return Err(Error::invalid_input(
                "send only one of \"image\", \"images\" and \"tensor\"",
            ))
        }
    };
    Ok(Request {
        model: direct.model,
        payload,
        top_k: direct.top_k,
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sources_are_recognised() {
        assert_eq!(Source::of(&json!({"image": "x"})), Source::Direct);
        assert_eq!(
            Source::of(&json!({"httpMethod": "POST", "requestContext": {}})),
            Source::ApiGatewayV1
        );
        let v2 = json!({"version": "2.0", "requestContext": {"http": {}, "domainName": "x.execute-api.us-east-1.amazonaws.com"}});
        assert_eq!(Source::of(&v2), Source::ApiGatewayV2);
        let url = json!({"version": "2.0", "requestContext": {"http": {}, "domainName": "abc.lambda-url.us-east-1.on.aws"}});
        assert_eq!(Source::of(&url), Source::FunctionUrl);
        let alb =
            json!({"httpMethod": "POST", "requestContext": {"elb": {}}, "multiValueHeaders": {}});
        assert_eq!(Source::of(&alb), Source::Alb { multi_value: true });
    }

    #[test]
    fn model_names_come_from_paths() {
        assert_eq!(
            model_from_path(Some("/models/resnet18")),
            Some("resnet18".into())
        );
        assert_eq!(
            model_from_path(Some("/prod/models/resnet18/")),
            Some("resnet18".into())
        );
        assert_eq!(model_from_path(Some("/predict")), None);
        assert_eq!(model_from_path(Some("/models/")), None);
        assert_eq!(model_from_path(None), None);
    }

    #[test]
    fn direct_requests_are_checked() {
        let limits = Limits {
            max_payload_bytes: 1 << 20,
            max_tensor_elements: 100,
            max_batch: 4,
            ..Limits::default()
        };
        let err = |v: Value| parse_direct(v, &limits).unwrap_err().to_string();
        assert!(err(json!({"image": 3})).contains("`image`"));
        assert!(err(json!({"img": "x"})).contains("unknown field `img`"));
        assert!(err(json!({})).contains("no input"));
        assert!(err(json!({"image": "!!!"})).contains("not valid base64"));
        assert!(err(json!({"image": "AAAA", "images": []})).contains("only one"));
        assert!(err(json!({"tensor": {"shape": [2, 2], "data": [1.0]}})).contains("needs 4"));
        assert!(err(json!([1, 2])).contains("an array"));
        assert!(err(json!({"tensor": {"shape": [1], "data": ["1"]}})).contains("`tensor.data[0]`"));
        assert!(
            err(json!({"tensor": {"shape": [-1], "data": [1.0]}})).contains("`tensor.shape[0]`")
        );
        assert!(err(json!({"images": vec!["AAAA"; 5]})).contains("LAMBDATORCH_MAX_BATCH"));
        assert!(err(json!({"text": "a", "image": "AAAA"})).contains("only one"));
        assert!(err(json!({"text": 3})).contains("`text`"));
        assert!(err(json!({"texts": [["a", "b", "c"]]})).contains("`texts"));
        assert!(matches!(
            parse_direct(json!({"texts": vec!["a"; 5]}), &limits),
            Err(Error::TooLarge {
                limit: crate::error::Limit::Texts,
                ..
            })
        ));
        let long = "a".repeat(limits.max_text_bytes as usize + 1);
        assert!(matches!(
            parse_direct(json!({"texts": ["ok", ["ok", long]]}), &limits),
            Err(Error::TooLarge {
                limit: crate::error::Limit::TextBytes,
                ..
            })
        ));
        let pair = parse_direct(json!({"texts": ["one", ["a", "b"]]}), &limits);
        assert!(matches!(
            pair.map(|r| r.payload),
            Ok(Payload::Texts(t)) if t == vec![
                TextSource::Single("one".into()),
                TextSource::Pair("a".into(), "b".into()),
            ]
        ));
        let big = "A".repeat(2 << 20);
        assert!(matches!(
            parse_direct(json!({"image": big}), &limits),
            Err(Error::TooLarge {
                limit: crate::error::Limit::PayloadBytes,
                ..
            })
        ));
        // Over the element limit: refused from the JSON's length, whatever the elements are.
        let data = vec![json!("not even a number"); 101];
        assert!(matches!(
            parse_direct(json!({"tensor": {"shape": [101], "data": data}}), &limits),
            Err(Error::TooLarge { max: 100, .. })
        ));
    }
}
