//! `sockets`: the account's WebSocket sessions.

use std::path::PathBuf;

use super::{Failure, load};

/// `jma-poller sockets`.
pub(super) async fn command(
    config: &Option<PathBuf>,
    status: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let settings = load(config)?;
    if let Some(st) = status.as_deref()
        && !["waiting", "open", "closed"].contains(&st)
    {
        return Err(Failure::from((
            2,
            format!("--status {st:?}: use waiting, open or closed"),
        )));
    }
    let key = settings.api_key().map_err(|e| Failure::from((2, e)))?;
    let client = crate::api::Client::new(&settings, key).map_err(|e| {
        let code = if matches!(e, crate::api::ClientError::Config(_)) {
            2
        } else {
            1
        };
        Failure::from((code, e))
    })?;
    sockets(&client, status.as_deref(), json).await
}

/// Pages through `/v2/socket` (at most 50 pages) and prints the sessions.
async fn sockets(
    client: &crate::api::Client,
    status: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let mut raw_items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..50 {
        let mut q: Vec<(&str, String)> = vec![("limit", "100".into())];
        if let Some(st) = status {
            q.push(("status", st.into()));
        }
        if let Some(c) = &cursor {
            q.push(("cursorToken", c.clone()));
        }
        let page = client.list("/v2/socket", &q).await.map_err(|e| {
            let code = if e.is_auth() { 3 } else { 1 };
            Failure::from((code, e))
        })?;
        raw_items.extend(page.items);
        match page.next_token {
            Some(t) => cursor = Some(t),
            None => break,
        }
    }
    if json {
        let text = serde_json::to_string_pretty(&raw_items).map_err(|e| Failure::from((1, e)))?;
        println!("{text}");
        return Ok(());
    }
    if raw_items.is_empty() {
        println!(
            "no WebSocket sessions{}",
            status
                .map(|s| format!(" with status {s}"))
                .unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "{:<8} {:<8} {:<20} {:<24} {:<24} {:<24} {:<15} {:<14} {:<24} classifications",
        "id", "status", "app", "start", "end", "last ping", "ip", "server", "types"
    );
    for raw in raw_items {
        match serde_json::from_value::<crate::api::models::SocketItem>(raw.clone()) {
            Ok(s) => println!(
                "{:<8} {:<8} {:<20} {:<24} {:<24} {:<24} {:<15} {:<14} {:<24} {}",
                s.id,
                s.status,
                s.app_name.as_deref().unwrap_or("-"),
                s.start.as_deref().unwrap_or("-"),
                s.end.as_deref().unwrap_or("-"),
                s.ping.as_deref().unwrap_or("-"),
                s.ip_address.as_deref().unwrap_or("-"),
                s.server.as_deref().unwrap_or("-"),
                // null = every type of the classifications
                s.types.as_ref().map_or("all".to_owned(), |t| t.join(",")),
                s.classifications.join(",")
            ),
            Err(e) => println!(
                "(unreadable entry: {e}: {})",
                raw.to_string().chars().take(120).collect::<String>()
            ),
        }
    }
    Ok(())
}
