//! The REST bridge's HTTP API under `/api/v1`: applications, their chats and the chats'
//! messages as JSON, a live feed as server-sent events, and the OpenAPI document of it all.
//!
//! Every failure is an HTTP status with a JSON body `{"code","title","message"}`; request
//! bodies are read and parsed here rather than by extractors, so that no input reaches a
//! plain-text rejection or a 500.

mod apps;
mod chats;
mod messages;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::Value;
use utoipa::OpenApi;

use crate::server::Server;
use crate::store::{RestApp, RestChat, RestMessage, StoreError};

/// Lists hold this many items unless the client asks (`per_page`), and never more than
/// [`MAX_PER_PAGE`].
pub const DEFAULT_PER_PAGE: i64 = 50;
pub const MAX_PER_PAGE: i64 = 500;
/// Request bodies beyond this are refused before they are parsed.
const MAX_REQUEST_BYTES: usize = 1 << 20;
/// The longest application name, in characters.
const MAX_NAME_CHARS: usize = 200;

pub fn router() -> Router<Arc<Server>> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/applications", post(apps::create).get(apps::list))
        .route(
            "/api/v1/applications/{token}",
            get(apps::show).put(apps::rename),
        )
        .route(
            "/api/v1/applications/{token}/chats",
            post(chats::create).get(chats::list),
        )
        .route(
            "/api/v1/applications/{token}/chats/{chat}",
            get(chats::show),
        )
        .route(
            "/api/v1/applications/{token}/chats/{chat}/members",
            post(chats::add_member).get(chats::members),
        )
        .route(
            "/api/v1/applications/{token}/chats/{chat}/members/{jid}",
            axum::routing::delete(chats::remove_member),
        )
        .route(
            "/api/v1/applications/{token}/chats/{chat}/messages",
            post(messages::create).get(messages::list),
        )
        .route(
            "/api/v1/applications/{token}/chats/{chat}/messages/search",
            post(messages::search),
        )
        .route(
            "/api/v1/applications/{token}/chats/{chat}/messages/stream",
            get(messages::stream),
        )
        .route(
            "/api/v1/applications/{token}/chats/{chat}/messages/{number}",
            get(messages::show).put(messages::edit),
        )
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rookery REST bridge",
        description = "Applications, chats and messages, live with the XMPP rooms behind them."
    ),
    paths(
        apps::create,
        apps::list,
        apps::show,
        apps::rename,
        chats::create,
        chats::list,
        chats::show,
        chats::add_member,
        chats::members,
        chats::remove_member,
        messages::create,
        messages::list,
        messages::show,
        messages::edit,
        messages::search,
        messages::stream,
    ),
    components(schemas(
        AppView,
        ChatView,
        MessageView,
        Created,
        ErrorBody,
        apps::NameBody,
        messages::BodyField,
        chats::MemberBody
    ))
)]
struct ApiDoc;

/// The OpenAPI document, generated from the handlers' annotations.
async fn openapi() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(doc) => json_text(StatusCode::OK, doc),
        Err(_) => ApiError::internal().into_response(),
    }
}

/// An application as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AppView {
    name: String,
    token: String,
    chats_count: i64,
}

impl From<RestApp> for AppView {
    fn from(a: RestApp) -> Self {
        AppView {
            name: a.name,
            token: a.token,
            chats_count: a.chats_count,
        }
    }
}

/// A chat as the API shows it, with the JID of the room that carries it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChatView {
    number: i64,
    messages_count: i64,
    jid: String,
}

impl ChatView {
    fn new(server: &Server, c: &RestChat) -> Self {
        ChatView {
            number: c.number,
            messages_count: c.messages_count,
            jid: crate::modules::bridge::room_jid(server, &c.room),
        }
    }
}

/// A message as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    number: i64,
    body: String,
    /// The application's name, or the room JID of the occupant who wrote it.
    sender: String,
    created_at: String,
    updated_at: String,
}

impl From<&RestMessage> for MessageView {
    fn from(m: &RestMessage) -> Self {
        MessageView {
            number: m.number,
            body: m.body.clone(),
            sender: m.sender.clone(),
            created_at: crate::stanza::stamp_from_ms(m.created_ms),
            updated_at: crate::stanza::stamp_from_ms(m.updated_ms),
        }
    }
}

/// What a create answers: the new item's number (and, for a chat, its room).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Created {
    number: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    jid: Option<String>,
}

/// Every error's body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable name of the error.
    code: &'static str,
    /// The HTTP status's words.
    title: &'static str,
    /// What went wrong, for a person.
    message: String,
}

/// A failed request: its status and JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    fn internal() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server could not produce this document",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "REST request failed in the store");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the database cannot be reached; try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            title: self.status.canonical_reason().unwrap_or("Error"),
            message: self.message,
        };
        let mut r = json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

pub type ApiResult = Result<Response, ApiError>;

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(text) => json_text(status, text),
        Err(_) => ApiError::internal().into_response(),
    }
}

fn json_text(status: StatusCode, text: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// Answers for routes and methods that do not exist, in the API's error shape.
pub async fn not_found(uri: Uri) -> Response {
    ApiError::not_found(format!("no such resource: {}", uri.path())).into_response()
}

pub async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
    .into_response()
}

/// Reads a request body as a JSON object.
pub async fn json_object(body: Body) -> Result<serde_json::Map<String, Value>, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_REQUEST_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!("request bodies are at most {MAX_REQUEST_BYTES} bytes"),
            )
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_body",
            "this request needs a JSON object as its body",
        ));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// A required, non-empty string field of at most `max_chars` characters.
pub fn text_field(
    body: &serde_json::Map<String, Value>,
    field: &str,
    max_chars: usize,
) -> Result<String, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Err(ApiError::invalid(
            "missing_field",
            format!("`{field}` is required"),
        )),
        Some(Value::String(s)) if s.trim().is_empty() => Err(ApiError::invalid(
            "empty_field",
            format!("`{field}` must not be empty"),
        )),
        Some(Value::String(s)) if s.chars().count() > max_chars => Err(ApiError::invalid(
            "too_long",
            format!("`{field}` has at most {max_chars} characters"),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::invalid(
            "wrong_type",
            format!("`{field}` must be a string"),
        )),
    }
}

/// The application a token names, or 404.
pub async fn app(server: &Server, token: &str) -> Result<RestApp, ApiError> {
    server
        .store
        .rest_app(token)
        .await?
        .ok_or_else(|| ApiError::not_found("no application has this token"))
}

/// A number in a path: a positive integer, or the item does not exist (404).
pub fn number(text: &str, what: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::not_found(format!("no {what} {text}")))
}

/// The chat a token and number name, or 404.
pub async fn chat(
    server: &Server,
    token: &str,
    chat: &str,
) -> Result<(RestApp, RestChat), ApiError> {
    let app = app(server, token).await?;
    let n = number(chat, "chat")?;
    let chat = server
        .store
        .rest_chat(app.id, n)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no chat {n}")))?;
    Ok((app, chat))
}

/// `?page=&per_page=` (and the rest of the query string), checked.
#[derive(Debug, Clone)]
pub struct Paging {
    pub page: i64,
    pub per_page: i64,
    query: HashMap<String, String>,
}

impl Paging {
    pub fn parse(query: HashMap<String, String>) -> Result<Paging, ApiError> {
        let positive = |key: &str, default: i64| -> Result<i64, ApiError> {
            match query.get(key) {
                None => Ok(default),
                Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_query",
                        format!("`{key}` must be a positive integer"),
                    )
                }),
            }
        };
        let page = positive("page", 1)?;
        // Asking for more than the most gives the most, as a page can hold.
        let per_page = positive("per_page", DEFAULT_PER_PAGE)?.min(MAX_PER_PAGE);
        Ok(Paging {
            page,
            per_page,
            query,
        })
    }

    /// A non-negative integer from the query string (`after`, say); 0 when absent.
    pub fn number(&self, key: &str) -> Result<i64, ApiError> {
        match self.query.get(key) {
            None => Ok(0),
            Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    format!("`{key}` must be a non-negative integer"),
                )
            }),
        }
    }

    pub fn offset(&self) -> i64 {
        (self.page - 1).saturating_mul(self.per_page)
    }

    /// A list response with its `Link` header (RFC 8288) for `total` items in all.
    pub fn respond<T: Serialize>(&self, uri: &Uri, items: &[T], total: i64) -> Response {
        let mut r = json(StatusCode::OK, &items);
        let last = ((total + self.per_page - 1) / self.per_page).max(1);
        let link = |page: i64, rel: &str| {
            let mut params: Vec<(String, String)> = self
                .query
                .iter()
                .filter(|(k, _)| k.as_str() != "page" && k.as_str() != "per_page")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            params.sort();
            params.push(("page".into(), page.to_string()));
            params.push(("per_page".into(), self.per_page.to_string()));
            let q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("<{}?{}>; rel=\"{rel}\"", uri.path(), q.join("&"))
        };
        let mut links = vec![link(1, "first")];
        if self.page > 1 {
            links.push(link((self.page - 1).min(last), "prev"));
        }
        if self.page < last {
            links.push(link(self.page + 1, "next"));
        }
        links.push(link(last, "last"));
        if let Ok(v) = HeaderValue::from_str(&links.join(", ")) {
            r.headers_mut().insert(header::LINK, v);
        }
        if let Ok(v) = HeaderValue::from_str(&total.to_string()) {
            r.headers_mut().insert("x-total-count", v);
        }
        r
    }
}

/// Whether the request carries `Authorization: Bearer <key>` with the admin key `key`.
pub fn is_admin(key: &str, headers: &HeaderMap) -> bool {
    use subtle::ConstantTimeEq;
    if key.is_empty() {
        return false;
    }
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.trim().as_bytes().ct_eq(key.as_bytes()).into()
}

/// A fresh application token: 192 random bits, URL-safe.
pub fn new_token() -> Result<String, ApiError> {
    use base64::Engine;
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_randomness",
            "the system's random source failed; try again",
        )
    })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

pub fn max_name_chars() -> usize {
    MAX_NAME_CHARS
}
