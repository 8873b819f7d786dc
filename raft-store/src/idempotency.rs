//! Idempotency records inside apply: stored answers per (topic, key), expired by log time and
//! bounded in count, both decided before each request that carries a key, so every node
//! evicts the same records whatever the size of its apply batches and however requests were
//! grouped into entries.

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::live::Working;
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

impl Working<'_> {
    /// Drop records older than the window, then the oldest beyond `records_max - 1` so the
    /// request about to be applied has room.
    pub fn evict_idempotency(
        &mut self,
        now_ms: u64,
        settings: &IdempotencySettings,
    ) -> Result<(), StoreError> {
        let cutoff = now_ms.saturating_sub(settings.window_ms);
        let mut doomed = Vec::new();
        {
            let stack = self.stack();
            let len = stack.idempotency_len()?;
            let over = (len + 1).saturating_sub(settings.records_max);
            for (n, row) in stack.by_age(self.by_age_floor.as_ref())?.enumerate() {
                let (k, ()) = row?;
                if k.0 > cutoff && (n as u64) >= over {
                    break;
                }
                doomed.push(k);
            }
        }
        for k in doomed {
            self.batch.idempotency.remove((k.3.clone(), k.4.clone()));
            self.batch.idempotency_net -= 1;
            self.batch.idempotency_by_age.remove(k.clone());
            self.by_age_floor = Some(k);
        }
        Ok(())
    }

    pub fn idempotency(&self, topic: &str, key: &str) -> Result<Option<Record>, StoreError> {
        match self.stack().idempotency(topic, key)? {
            None => Ok(None),
            Some(v) => serde_json::from_str(&v)
                .map(Some)
                .map_err(|e| StoreError::corrupt("idempotency", format!("{topic}/{key}"), e)),
        }
    }

    pub fn put_idempotency(
        &mut self,
        topic: &str,
        key: &str,
        record: &Record,
    ) -> Result<(), StoreError> {
        match self.idempotency(topic, key)? {
            Some(old) => self.batch.idempotency_by_age.remove((
                old.log_time_ms,
                old.log_index,
                old.position,
                topic.to_string(),
                key.to_string(),
            )),
            None => self.batch.idempotency_net += 1,
        }
        let json = serde_json::to_string(record).expect("idempotency records serialize");
        self.batch
            .idempotency
            .insert((topic.to_string(), key.to_string()), json);
        self.batch.idempotency_by_age.insert(
            (
                record.log_time_ms,
                record.log_index,
                record.position,
                topic.to_string(),
                key.to_string(),
            ),
            (),
        );
        Ok(())
    }
}
