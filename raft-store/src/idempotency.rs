//! Idempotency records inside apply: stored answers per (topic, key), expired by log time and
//! bounded in count, both decided before each request that carries a key, so every node
//! evicts the same records whatever the size of its apply batches and however requests were
//! grouped into entries.

use redb::{ReadableTable, ReadableTableMetadata, Table};
use serde::{Deserialize, Serialize};

use crate::checksum::Sealed;
use crate::error::StoreError;
use crate::rules::IdempotencySettings;
use crate::types::Answer;

/// What is stored under an idempotency key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub fingerprint: String,
    pub answer: Answer,
    pub log_time_ms: u64,
    pub log_index: u64,
    /// The request's place in its entry: records of one entry are evicted in request order,
    /// as they would be had each request had its own entry.
    #[serde(default)]
    pub position: u32,
}

pub(crate) struct IdempotencyTables<'txn> {
    pub records: Table<'txn, (&'static str, &'static str), Sealed<&'static str>>,
    pub by_age: Table<'txn, crate::tables::AgeKey, ()>,
}

impl IdempotencyTables<'_> {
    /// Drop records older than the window, then the oldest beyond `records_max - 1` so the
    /// request about to be applied has room.
    pub fn evict(&mut self, now_ms: u64, settings: &IdempotencySettings) -> Result<(), StoreError> {
        let cutoff = now_ms.saturating_sub(settings.window_ms);
        let mut doomed = Vec::new();
        let len = self.records.len()?;
        let over = (len + 1).saturating_sub(settings.records_max);
        for (n, row) in self.by_age.iter()?.enumerate() {
            let (k, _) = row?;
            let (time, index, position, topic, key) = k.value();
            if time > cutoff && (n as u64) >= over {
                break;
            }
            doomed.push((time, index, position, topic.to_string(), key.to_string()));
        }
        for (time, index, position, topic, key) in doomed {
            self.by_age
                .remove((time, index, position, topic.as_str(), key.as_str()))?;
            self.records.remove((topic.as_str(), key.as_str()))?;
        }
        Ok(())
    }

    pub fn get(&self, topic: &str, key: &str) -> Result<Option<Record>, StoreError> {
        match self.records.get((topic, key))? {
            None => Ok(None),
            Some(v) => serde_json::from_str(v.value())
                .map(Some)
                .map_err(|e| StoreError::corrupt("idempotency", format!("{topic}/{key}"), e)),
        }
    }

    pub fn put(&mut self, topic: &str, key: &str, record: &Record) -> Result<(), StoreError> {
        if let Some(old) = self.get(topic, key)? {
            self.by_age
                .remove((old.log_time_ms, old.log_index, old.position, topic, key))?;
        }
        let json = serde_json::to_string(record).expect("idempotency records serialize");
        self.records.insert((topic, key), json.as_str())?;
        self.by_age.insert(
            (
                record.log_time_ms,
                record.log_index,
                record.position,
                topic,
                key,
            ),
            (),
        )?;
        Ok(())
    }
}
