//! `GET /v1/backup` (admin): a consistent backup of this node's applied state, streamed.
//!
//! The backup is first written to a file in the node's snapshot folder (one read transaction;
//! applies go on meanwhile; signed under the cluster secret when there is one), then sent in
//! chunks with its size, log index and CRC-32C in the
//! headers, so the client can check what it received end to end before keeping it. The file
//! is removed once sent, or when the client goes away.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use raft_store::BackupFile;
use std::io::Read;

use crate::app::SharedApp;
use api::error::ApiError;

use api::client::{BACKUP_CRC_HEADER, BACKUP_INDEX_HEADER};

const CHUNK_BYTES: usize = 1024 * 1024;

pub async fn backup(State(app): State<SharedApp>) -> Result<Response, ApiError> {
    if *app.reader.applied_watch().borrow() == 0 {
        return Err(ApiError::unavailable(
            "this node has applied nothing yet: there is nothing to back up",
        ));
    }
    // One at a time, and only with room for it: a backup is about the size of a snapshot, and
    // a full disk would stop this node's Raft log.
    let Ok(slot) = app.runtime.backup_slot.clone().try_acquire_owned() else {
        return Err(ApiError::overloaded(
            "a backup is already being written on this node; retry when it is done",
        ));
    };
    app.disk
        .check(app.settings.limits.disk_free_min_bytes)
        .map_err(|low| {
            ApiError::unavailable(format!("node {}: no room for a backup: {low}", app.id))
        })?;
    let reader = app.reader.clone();
    let key = app.settings.cluster_secret.clone();
    let file = raft_store::blocking(move || reader.backup(key.as_deref().map(str::as_bytes)))
        .await
        .map_err(crate::errors::api_error)?;
    tracing::info!(
        log_index = file.info.log_index,
        bytes = file.bytes,
        "sending a backup"
    );
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, file.bytes.to_string()),
        (
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"uniqlog-{}.backup\"",
                file.info.log_index
            ),
        ),
        (
            header::HeaderName::from_static(BACKUP_INDEX_HEADER),
            file.info.log_index.to_string(),
        ),
        (
            header::HeaderName::from_static(BACKUP_CRC_HEADER),
            file.crc32c.to_string(),
        ),
    ];
    // Each chunk is read on a blocking thread; the stream ends with the file, or with an
    // error (the client then sees a body shorter than its length).
    // The slot goes with the file: both are released when the stream ends or is dropped.
    let chunks = futures::stream::unfold(Some((file, slot)), |state| async move {
        let (file, slot) = state?;
        let (file, read) = raft_store::blocking(move || read_chunk(file)).await;
        match read {
            Ok(chunk) if chunk.is_empty() => None,
            Ok(chunk) => Some((Ok(Bytes::from(chunk)), Some((file, slot)))),
            Err(e) => {
                tracing::warn!(error = %e, "reading the backup failed");
                Some((Err(e), None))
            }
        }
    });
    Ok((headers, Body::from_stream(chunks)).into_response())
}

fn read_chunk(mut file: BackupFile) -> (BackupFile, std::io::Result<Vec<u8>>) {
    let mut buf = vec![0; CHUNK_BYTES];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return (file, Err(e)),
        }
    }
    buf.truncate(filled);
    (file, Ok(buf))
}
