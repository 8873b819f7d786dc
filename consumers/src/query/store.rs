//! The users read model in its own redb file. Each page of events and the checkpoint after it
//! commit in one durable write transaction, so every event takes effect exactly once across
//! crashes.

use std::path::Path;

use api::users::events::UserEvent;
use api::wire::Event;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};

use super::answers::{History, Stats, User};

/// Counters and position: `next_offset`, `last_event_ms`, the sign-up stats, and `format`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The on-disk format of the read model. Files from before the key was written are of this
/// same format (it has not changed since), and are stamped when opened.
pub const FORMAT_VERSION: u64 = 1;
/// user id -> current document.
const DOCS: TableDefinition<&str, &str> = TableDefinition::new("docs");
/// (user id, offset) -> the document right after the event at that offset (for `as_of`).
const VERSIONS: TableDefinition<(&str, u64), &str> = TableDefinition::new("versions");
/// (user id, offset) -> the event as read from the log (for history).
const EVENTS: TableDefinition<(&str, u64), &str> = TableDefinition::new("events");
/// (normalized email, user id) of accounts that are not deleted.
const BY_EMAIL: TableDefinition<(&str, &str), ()> = TableDefinition::new("by_email");
/// (username, user id) of accounts that are not deleted; usernames are not unique.
const BY_USERNAME: TableDefinition<(&str, &str), ()> = TableDefinition::new("by_username");
/// normalized email -> accounts with it that were deleted (for `recreated`).
const DELETED_EMAILS: TableDefinition<&str, u64> = TableDefinition::new("deleted_emails");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("query store: {0}")]
    Redb(#[from] redb::Error),
    #[error("query store: corrupt document of {0}")]
    Corrupt(String),
    #[error("query store: expected offset {expected} of users, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error(
        "the read model is in on-disk format {found}; this build reads format {FORMAT_VERSION} \
         only: rebuild it from the log with `uniqlog query --rebuild`"
    )]
    Format { found: u64 },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(impl From<$t> for StoreError { fn from(e: $t) -> Self { StoreError::Redb(e.into()) } })*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

pub struct QueryStore {
    db: Database,
}

fn norm_email(e: &str) -> String {
    api::keys::email(e).unwrap_or_else(|_| e.trim().to_lowercase())
}

fn bump(meta: &mut Table<'_, &str, u64>, key: &str, by: u64) -> Result<(), StoreError> {
    let v = meta.get(key)?.map_or(0, |g| g.value());
    meta.insert(key, v + by)?;
    Ok(())
}

impl QueryStore {
    pub fn open(path: &Path) -> Result<QueryStore, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Redb(redb::StorageError::Io(e).into()))?;
        }
        Self::with_database(Database::create(path)?)
    }

    /// Open the read model on any redb backend: the simulator passes its disk, which loses
    /// unsynced writes on a crash like a real one.
    pub fn open_with_backend(backend: impl redb::StorageBackend) -> Result<QueryStore, StoreError> {
        Self::with_database(Database::builder().create_with_backend(backend)?)
    }

    fn with_database(db: Database) -> Result<QueryStore, StoreError> {
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("format")?.map(|g| g.value());
            match found {
                Some(FORMAT_VERSION) => {}
                None => {
                    meta.insert("format", FORMAT_VERSION)?;
                }
                Some(found) => return Err(StoreError::Format { found }),
            }
        }
        txn.open_table(DOCS)?;
        txn.open_table(VERSIONS)?;
        txn.open_table(EVENTS)?;
        txn.open_table(BY_EMAIL)?;
        txn.open_table(BY_USERNAME)?;
        txn.open_table(DELETED_EMAILS)?;
        txn.commit()?;
        Ok(QueryStore { db })
    }

    fn meta(&self, key: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(META)?.get(key)?.map_or(0, |g| g.value()))
    }

    /// The next offset of `users` to apply.
    pub fn next_offset(&self) -> Result<u64, StoreError> {
        self.meta("next_offset")
    }

    pub fn last_event_ms(&self) -> Result<u64, StoreError> {
        self.meta("last_event_ms")
    }

    pub fn stats(&self) -> Result<Stats, StoreError> {
        Ok(Stats {
            activated: self.meta("activated")?,
            created: self.meta("created")?,
            deleted: self.meta("deleted")?,
            recreated: self.meta("recreated")?,
        })
    }

    /// Apply a page of events (offsets from `next_offset()` on) and advance the checkpoint,
    /// in one durable transaction.
    pub fn apply(&self, events: &[Event], next_offset: u64) -> Result<(), StoreError> {
        #[cfg(madsim)]
        if crate::planted::is(crate::planted::Bug::ProjectionOutsideTxn) {
            return self.apply_outside_txn(events, next_offset);
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            let from = meta.get("next_offset")?.map_or(0, |g| g.value());
            let mut expected = from;
            for e in events {
                let offset = e.offset;
                if offset < from {
                    continue; // already applied before a crash
                }
                if offset != expected {
                    // Never skip: a gap means the page is not what the log holds.
                    return Err(StoreError::Gap {
                        expected,
                        got: offset,
                    });
                }
                expected += 1;
                apply_event(&txn, &mut meta, e)?;
                meta.insert("last_event_ms", e.timestamp)?;
            }
            meta.insert("next_offset", next_offset.max(from))?;
        }
        txn.commit()?;
        Ok(())
    }

    /// [`crate::planted::Bug::ProjectionOutsideTxn`]: the page's documents commit durably
    /// in one transaction, the checkpoint in another that is not durable, so a crash after the
    /// first keeps the documents and loses the checkpoint, and the page is applied again.
    #[cfg(madsim)]
    fn apply_outside_txn(&self, events: &[Event], next_offset: u64) -> Result<(), StoreError> {
        let from = self.next_offset()?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            for e in events {
                if e.offset >= from {
                    apply_event(&txn, &mut meta, e)?;
                }
            }
        }
        txn.commit()?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        txn.open_table(META)?
            .insert("next_offset", next_offset.max(from))?;
        txn.commit()?;
        Ok(())
    }

    pub fn doc(&self, id: &str) -> Result<Option<User>, StoreError> {
        let txn = self.db.begin_read()?;
        let docs = txn.open_table(DOCS)?;
        docs.get(id)?
            .map(|g| serde_json::from_str(g.value()).map_err(|_| StoreError::Corrupt(id.into())))
            .transpose()
    }

    /// The document as it was right after the event at `offset` (or the last one before it).
    pub fn doc_as_of(&self, id: &str, offset: u64) -> Result<Option<User>, StoreError> {
        let txn = self.db.begin_read()?;
        let versions = txn.open_table(VERSIONS)?;
        let last = versions
            .range((id, 0)..=(id, offset))?
            .next_back()
            .transpose()?;
        last.map(|(_, v)| {
            serde_json::from_str(v.value()).map_err(|_| StoreError::Corrupt(id.into()))
        })
        .transpose()
    }

    pub fn history(&self, id: &str) -> Result<History, StoreError> {
        let txn = self.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        for row in events.range((id, 0)..=(id, u64::MAX))? {
            let (_, v) = row?;
            out.push(serde_json::from_str(v.value()).map_err(|_| StoreError::Corrupt(id.into()))?);
        }
        Ok(History { events: out })
    }

    fn ids_in(
        &self,
        table: TableDefinition<(&str, &str), ()>,
        key: &str,
    ) -> Result<Vec<User>, StoreError> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(table)?;
        let docs = txn.open_table(DOCS)?;
        let mut out = Vec::new();
        for row in index.range((key, "")..)? {
            let (k, _) = row?;
            let (k0, id) = k.value();
            if k0 != key {
                break;
            }
            if let Some(d) = docs.get(id)? {
                out.push(
                    serde_json::from_str(d.value()).map_err(|_| StoreError::Corrupt(id.into()))?,
                );
            }
        }
        Ok(out)
    }

    pub fn by_email(&self, email: &str) -> Result<Vec<User>, StoreError> {
        self.ids_in(BY_EMAIL, &norm_email(email))
    }

    pub fn by_username(&self, username: &str) -> Result<Vec<User>, StoreError> {
        self.ids_in(BY_USERNAME, username)
    }

    /// Every document, by id (for comparing read models).
    pub fn all_docs(&self) -> Result<Vec<User>, StoreError> {
        let txn = self.db.begin_read()?;
        let docs = txn.open_table(DOCS)?;
        let mut out = Vec::new();
        for row in docs.iter()? {
            let (k, v) = row?;
            out.push(
                serde_json::from_str(v.value())
                    .map_err(|_| StoreError::Corrupt(k.value().into()))?,
            );
        }
        Ok(out)
    }
}

fn apply_event(
    txn: &WriteTransaction,
    meta: &mut Table<'_, &str, u64>,
    e: &Event,
) -> Result<(), StoreError> {
    // Every event of the account counts in its version (a document's version is its
    // stream's length), whether or not this build knows its type.
    let Some(id) = e.data["id"].as_str() else {
        return Ok(());
    };
    let (offset, ts) = (e.offset, e.timestamp);
    let mut docs = txn.open_table(DOCS)?;
    let mut by_email = txn.open_table(BY_EMAIL)?;
    let mut by_username = txn.open_table(BY_USERNAME)?;
    let mut deleted_emails = txn.open_table(DELETED_EMAILS)?;
    let known: Option<User> = match docs.get(id)? {
        Some(g) => {
            Some(serde_json::from_str(g.value()).map_err(|_| StoreError::Corrupt(id.into()))?)
        }
        None => None,
    };
    let mut doc = match (UserEvent::of(e), known) {
        (
            Some(UserEvent::AccountCreated {
                username, email, ..
            }),
            _,
        ) => {
            by_email.insert((norm_email(&email).as_str(), id), ())?;
            by_username.insert((username.as_str(), id), ())?;
            bump(meta, "created", 1)?;
            if deleted_emails.get(norm_email(&email).as_str())?.is_some() {
                bump(meta, "recreated", 1)?;
            }
            User {
                created_at: ts,
                email,
                id: id.to_string(),
                status: "pending".into(),
                updated_at: ts,
                username,
                version: 0,
            }
        }
        (_, None) => return Ok(()), // an event for an account we never saw created
        (Some(UserEvent::EmailChanged { new_email, .. }), Some(mut doc)) => {
            by_email.remove((norm_email(&doc.email).as_str(), id))?;
            by_email.insert((norm_email(&new_email).as_str(), id), ())?;
            doc.email = new_email;
            doc
        }
        (Some(UserEvent::AccountActivated { .. }), Some(mut doc)) => {
            doc.status = "active".into();
            bump(meta, "activated", 1)?;
            doc
        }
        (Some(UserEvent::AccountDeleted { .. }), Some(mut doc)) => {
            let email = norm_email(&doc.email);
            by_email.remove((email.as_str(), id))?;
            by_username.remove((doc.username.as_str(), id))?;
            let n = deleted_emails.get(email.as_str())?.map_or(0, |g| g.value());
            deleted_emails.insert(email.as_str(), n + 1)?;
            doc.status = "deleted".into();
            bump(meta, "deleted", 1)?;
            doc
        }
        (Some(UserEvent::ActivationRequested { .. }) | None, Some(doc)) => doc,
    };
    doc.version += 1;
    doc.updated_at = ts;
    let text_doc = serde_json::to_string(&doc).expect("a document serializes");
    docs.insert(id, text_doc.as_str())?;
    txn.open_table(VERSIONS)?
        .insert((id, offset), text_doc.as_str())?;
    txn.open_table(EVENTS)?.insert(
        (id, offset),
        serde_json::to_string(e)
            .expect("an event serializes")
            .as_str(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// User `n`'s sign-up, served at `offset`.
    fn created(offset: u64, n: u128) -> Event {
        let id = uuid::Uuid::from_u128(n);
        let (name, data) = UserEvent::AccountCreated {
            id: id.to_string(),
            username: "ann".into(),
            email: "Ann@Example.com".into(),
        }
        .to_parts();
        Event {
            topic: "users".into(),
            offset,
            log_index: offset + 1,
            timestamp: 7,
            event_type: name,
            stream: Some(format!("user-{id}")),
            data,
            metadata: None,
        }
    }

    /// The read model's file names its format; another one is refused with the way out.
    #[test]
    fn a_read_model_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.redb");
        QueryStore::open(&path)
            .unwrap()
            .apply(&[created(0, 1)], 1)
            .unwrap();
        {
            // Unversioned (as written before the stamp) is this format: stamped at open.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().remove("format").unwrap();
            txn.commit().unwrap();
        }
        let store = QueryStore::open(&path).unwrap();
        assert_eq!(store.meta("format").unwrap(), FORMAT_VERSION);
        assert_eq!(store.next_offset().unwrap(), 1);
        drop(store);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("format", 2).unwrap();
            txn.commit().unwrap();
        }
        match QueryStore::open(&path) {
            Err(e @ StoreError::Format { found: 2 }) => {
                assert!(e.to_string().contains("uniqlog query --rebuild"), "{e}")
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a read model of format 2 was opened"),
        }
    }

    #[test]
    fn a_store_on_any_backend_applies_each_event_once() {
        let store =
            QueryStore::open_with_backend(redb::backends::InMemoryBackend::new()).expect("open");
        assert_eq!(store.next_offset().unwrap(), 0);
        store.apply(&[created(0, 1)], 1).unwrap();
        // The same page again (a tail that re-read it): nothing applied twice.
        store.apply(&[created(0, 1), created(1, 2)], 2).unwrap();
        assert_eq!(store.next_offset().unwrap(), 2);
        let a = uuid::Uuid::from_u128(1).to_string();
        assert_eq!(store.doc(&a).unwrap().unwrap().version, 1);
        assert_eq!(store.by_email("ann@example.com").unwrap().len(), 2);
        assert_eq!(store.stats().unwrap().created, 2);
    }
}
