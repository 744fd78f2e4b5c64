//! A chat's messages: posted, listed, read, edited and searched over HTTP, and a live feed of
//! new and edited ones as server-sent events.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::{ApiError, ApiResult, Created, MessageView, Paging, json};
use crate::modules::bridge;
use crate::server::Server;
use crate::store::{NewRestMessage, RestMessage};

/// The body of a posted or edited message, and of a search.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BodyField {
    pub body: String,
}

/// A live feed re-reads the chat this often even without a wake-up, in case one was lost.
const FEED_POLL: Duration = Duration::from_secs(5);
/// Changes read from the store at a time by a live feed.
const FEED_BATCH: i64 = 100;

/// Posts a message: it gets the chat's next number and reaches the room's occupants.
#[utoipa::path(post, path = "/api/v1/applications/{token}/chats/{chat}/messages",
    request_body = BodyField, params(("token" = String, Path), ("chat" = i64, Path)),
    responses((status = 201, body = Created), (status = 400, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub async fn create(
    State(server): State<Arc<Server>>,
    Path((token, chat)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    let (app, chat) = super::chat(&server, &token, &chat).await?;
    let body = super::json_object(body).await?;
    let text = super::text_field(&body, "body", server.config.limits.max_body_chars)?;
    let xmpp_id = uuid::Uuid::new_v4().to_string();
    let new = NewRestMessage {
        body: &text,
        sender: &app.name,
        xmpp_id: &xmpp_id,
        via_api: true,
        now_ms: chrono::Utc::now().timestamp_millis(),
    };
    let msg = server
        .store
        .rest_add_message(app.id, chat.number, &new)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no chat {}", chat.number)))?;
    bridge::post(&server, &chat, &msg).await;
    bridge::changed(&server, app.id, chat.number);
    Ok(json(
        StatusCode::CREATED,
        &Created {
            number: msg.number,
            jid: None,
        },
    ))
}

/// The chat's messages, oldest first; `?after=N` gives those after message N.
#[utoipa::path(get, path = "/api/v1/applications/{token}/chats/{chat}/messages",
    params(("token" = String, Path), ("chat" = i64, Path), ("after" = Option<i64>, Query),
        ("page" = Option<i64>, Query), ("per_page" = Option<i64>, Query)),
    responses((status = 200, body = [MessageView]), (status = 400, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody)))]
pub async fn list(
    State(server): State<Arc<Server>>,
    Path((token, chat)): Path<(String, String)>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let paging = Paging::parse(query)?;
    let after = paging.number("after")?;
    let (app, chat) = super::chat(&server, &token, &chat).await?;
    let messages = server
        .store
        .rest_messages(app.id, chat.number, after, paging.offset(), paging.per_page)
        .await?;
    let views: Vec<MessageView> = messages.iter().map(MessageView::from).collect();
    let total = (chat.messages_count - after).max(0);
    Ok(paging.respond(&uri, &views, total))
}

#[utoipa::path(get, path = "/api/v1/applications/{token}/chats/{chat}/messages/{number}",
    params(("token" = String, Path), ("chat" = i64, Path), ("number" = i64, Path)),
    responses((status = 200, body = MessageView), (status = 404, body = super::ErrorBody)))]
pub async fn show(
    State(server): State<Arc<Server>>,
    Path((token, chat, number)): Path<(String, String, String)>,
) -> ApiResult {
    let (app, chat) = super::chat(&server, &token, &chat).await?;
    let msg = message(&server, app.id, chat.number, &number).await?;
    Ok(json(StatusCode::OK, &MessageView::from(&msg)))
}

/// Replaces a posted message's body; the room's occupants get a correction (XEP-0308).
/// Messages written in the room belong to their authors and cannot be edited here.
#[utoipa::path(put, path = "/api/v1/applications/{token}/chats/{chat}/messages/{number}",
    request_body = BodyField,
    params(("token" = String, Path), ("chat" = i64, Path), ("number" = i64, Path)),
    responses((status = 200, body = MessageView), (status = 400, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub async fn edit(
    State(server): State<Arc<Server>>,
    Path((token, chat, number)): Path<(String, String, String)>,
    body: Body,
) -> ApiResult {
    let (app, chat) = super::chat(&server, &token, &chat).await?;
    let old = message(&server, app.id, chat.number, &number).await?;
    let body = super::json_object(body).await?;
    let text = super::text_field(&body, "body", server.config.limits.max_body_chars)?;
    if !old.via_api {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_editable",
            format!(
                "message {} was written in the room by {}; only messages posted through the API can be edited",
                old.number, old.sender
            ),
        ));
    }
    // Later than the creation even within the same millisecond: that is what marks an edit.
    let now = chrono::Utc::now()
        .timestamp_millis()
        .max(old.created_ms + 1);
    let msg = server
        .store
        .rest_edit_message(app.id, chat.number, old.number, &text, now)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no message {}", old.number)))?;
    bridge::correct(&server, &chat, &msg).await;
    bridge::changed(&server, app.id, chat.number);
    Ok(json(StatusCode::OK, &MessageView::from(&msg)))
}

/// Messages with any of the words, best matches first.
#[utoipa::path(post, path = "/api/v1/applications/{token}/chats/{chat}/messages/search",
    request_body = BodyField,
    params(("token" = String, Path), ("chat" = i64, Path), ("per_page" = Option<i64>, Query)),
    responses((status = 200, body = [MessageView]), (status = 400, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub async fn search(
    State(server): State<Arc<Server>>,
    Path((token, chat)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> ApiResult {
    let paging = Paging::parse(query)?;
    let (app, chat) = super::chat(&server, &token, &chat).await?;
    let body = super::json_object(body).await?;
    let words = super::text_field(&body, "body", server.config.limits.max_body_chars)?;
    let found = server
        .store
        .rest_search(app.id, chat.number, &words, paging.per_page)
        .await?;
    let views: Vec<MessageView> = found.iter().map(MessageView::from).collect();
    Ok(json(StatusCode::OK, &views))
}

/// Server-sent events, one per new or edited message, with the chat's change counter as the
/// event id: a client that reconnects with `Last-Event-ID` gets what it missed.
#[utoipa::path(get, path = "/api/v1/applications/{token}/chats/{chat}/messages/stream",
    params(("token" = String, Path), ("chat" = i64, Path),
        ("Last-Event-ID" = Option<i64>, Header)),
    responses((status = 200, description = "text/event-stream of MessageView with an `event` field"),
        (status = 400, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
pub async fn stream(
    State(server): State<Arc<Server>>,
    Path((token, chat)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let (app, chat) = super::chat(&server, &token, &chat).await?;
    let since = match headers.get("last-event-id") {
        None => chat.revision,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_last_event_id",
                    "Last-Event-ID must be an event id this feed sent",
                )
            })?,
    };
    let feed = Feed {
        wake: bridge::subscribe(&server),
        stop: server.shutdown_signal(),
        server,
        app_id: app.id,
        chat: chat.number,
        revision: since,
        pending: VecDeque::new(),
    };
    let events = futures::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok::<Event, Infallible>(event), feed))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn message(
    server: &Server,
    app_id: i64,
    chat: i64,
    number: &str,
) -> Result<RestMessage, ApiError> {
    let n = super::number(number, "message")?;
    server
        .store
        .rest_message(app_id, chat, n)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no message {n}")))
}

/// One client's live feed of a chat.
struct Feed {
    server: Arc<Server>,
    app_id: i64,
    chat: i64,
    /// The last change sent.
    revision: i64,
    pending: VecDeque<Event>,
    wake: Option<broadcast::Receiver<(i64, i64)>>,
    stop: watch::Receiver<bool>,
}

#[derive(Serialize)]
struct FeedItem<'a> {
    event: &'static str,
    #[serde(flatten)]
    message: &'a MessageView,
}

impl Feed {
    /// The next event; None when the server shuts down.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if *self.stop.borrow() {
                return None;
            }
            if let Ok(changes) = self
                .server
                .store
                .rest_changes(self.app_id, self.chat, self.revision, FEED_BATCH)
                .await
                && !changes.is_empty()
            {
                for m in &changes {
                    self.revision = self.revision.max(m.revision);
                    self.pending.push_back(event(m));
                }
                continue;
            }
            let key = (self.app_id, self.chat);
            let woken = async {
                match &mut self.wake {
                    Some(rx) => loop {
                        match rx.recv().await {
                            Ok(k) if k == key => break,
                            Ok(_) => {}
                            // Behind: re-read to be sure.
                            Err(broadcast::error::RecvError::Lagged(_)) => break,
                            Err(broadcast::error::RecvError::Closed) => {
                                std::future::pending::<()>().await
                            }
                        }
                    },
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(FEED_POLL) => {}
                _ = self.stop.changed() => return None,
            }
        }
    }
}

fn event(m: &RestMessage) -> Event {
    let view = MessageView::from(m);
    let item = FeedItem {
        event: if m.updated_ms > m.created_ms {
            "edited"
        } else {
            "created"
        },
        message: &view,
    };
    Event::default()
        .id(m.revision.to_string())
        .data(serde_json::to_string(&item).unwrap_or_default())
}
