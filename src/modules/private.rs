//! Private XML storage (XEP-0049): an account keeps XML fragments on the server, each under its
//! root element's name and namespace, which only the account itself can read or change.
//! Clients keep preferences there, bookmarks in the XEP-0048 form, and Pidgin its roster group
//! delimiter (XEP-0083).

use async_trait::async_trait;
use minidom::Element;

use super::{IqRequest, IqResult, Module};
use crate::server::Server;
use crate::stanza::StanzaError;
use crate::store::PrivateFragment;
use crate::stream::{ns, writer};

pub const NS: &str = "jabber:iq:private";
/// A fragment larger than this is refused; a stanza carries at most `max_stanza_bytes` anyway.
const MAX_FRAGMENT_BYTES: usize = 128 * 1024;
/// Fragments one account may keep, so that storage per account stays bounded.
const MAX_FRAGMENTS: u64 = 256;
/// Namespaces a fragment cannot have: they are not a namespace of its own (XEP-0049 §2.3).
const NOT_ITS_OWN: [&str; 3] = [NS, ns::CLIENT, ns::SERVER];

pub struct Private;

#[async_trait]
impl Module for Private {
    fn name(&self) -> &'static str {
        "private"
    }

    fn server_features(&self, _server: &Server) -> Vec<&'static str> {
        vec![NS]
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle_iq(&self, req: IqRequest<'_>) -> IqResult {
        // Another account's storage: forbidden, which XEP-0049 prefers to service-unavailable.
        let user = req.own_user()?;
        if req.payload.name() != "query" {
            return Err(StanzaError::bad_request());
        }
        let fragments: Vec<&Element> = req.payload.children().collect();
        if fragments.is_empty() {
            return Err(StanzaError::not_acceptable().with_text("name the fragment in the query"));
        }
        if fragments
            .iter()
            .any(|f| NOT_ITS_OWN.contains(&f.ns().as_str()))
        {
            return Err(
                StanzaError::not_acceptable().with_text("a fragment needs a namespace of its own")
            );
        }
        if req.is_set {
            store(&req, user, &fragments).await?;
            return Ok(None);
        }
        let [wanted] = fragments.as_slice() else {
            return Err(StanzaError::bad_request().with_text("one fragment per request"));
        };
        let ns = wanted.ns();
        let stored = req
            .server
            .store
            .private_data(user, &ns, wanted.name())
            .await
            .map_err(|_| StanzaError::internal())?;
        // Nothing stored: the empty element asked for, as the XEP's servers answer.
        let fragment = stored
            .and_then(|xml| xml.parse::<Element>().ok())
            .unwrap_or_else(|| Element::bare(wanted.name(), ns.as_str()));
        let mut query = Element::bare("query", NS);
        query.append_child(fragment);
        Ok(Some(query))
    }
}

async fn store(req: &IqRequest<'_>, user: &str, fragments: &[&Element]) -> Result<(), StanzaError> {
    let mut changes = Vec::with_capacity(fragments.len());
    for f in fragments {
        let xml = if is_empty(f) {
            None
        } else {
            let xml =
                String::from_utf8(writer::element(f)).map_err(|_| StanzaError::bad_request())?;
            if xml.len() > MAX_FRAGMENT_BYTES {
                return Err(StanzaError::not_acceptable().with_text("fragment too large"));
            }
            Some(xml)
        };
        changes.push(PrivateFragment {
            namespace: f.ns(),
            name: f.name().to_owned(),
            xml,
        });
    }
    check_room(req, user, &changes).await?;
    req.server
        .store
        .set_private_data(user, &changes)
        .await
        .map_err(|_| StanzaError::internal())
}

/// An element with nothing in it stores nothing: it removes what was kept under its name.
fn is_empty(el: &Element) -> bool {
    el.attrs().into_iter().next().is_none()
        && el.children().next().is_none()
        && el.text().trim().is_empty()
}

/// Refuses a set that would take the account past [`MAX_FRAGMENTS`].
async fn check_room(
    req: &IqRequest<'_>,
    user: &str,
    changes: &[PrivateFragment],
) -> Result<(), StanzaError> {
    let store = &req.server.store;
    let count = store
        .private_data_count(user)
        .await
        .map_err(|_| StanzaError::internal())?;
    let added = changes.iter().filter(|c| c.xml.is_some());
    if count + added.clone().count() as u64 <= MAX_FRAGMENTS {
        return Ok(());
    }
    let mut new = 0;
    for c in added {
        let kept = store
            .private_data(user, &c.namespace, &c.name)
            .await
            .map_err(|_| StanzaError::internal())?;
        new += u64::from(kept.is_none());
    }
    if count + new > MAX_FRAGMENTS {
        return Err(StanzaError::resource_constraint().with_text("too many stored fragments"));
    }
    Ok(())
}
