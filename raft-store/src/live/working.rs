//! One apply batch's changes, private until the batch is done.

use std::sync::{Arc, MutexGuard, RwLockReadGuard};

use serde::Serialize;

use super::{AgeKeyOwned, Carried, Layer, Layers, LiveState, Stack, Writer};
use crate::checksum;
use crate::state_overlay::StateOverlay;

/// One apply batch: reads see the batch's own changes over the layers and the file; writes go
/// to the batch, which [`Working::finish`] lays over the active layer in one step.
pub(crate) struct Working<'a> {
    pub(super) live: &'a LiveState,
    /// Holds the file's view (`Writer::file`, set by `LiveState::begin`).
    pub(super) writer: MutexGuard<'a, Writer>,
    pub(super) layers: Option<RwLockReadGuard<'a, Layers>>,
    pub(crate) batch: StateOverlay,
    pub(crate) by_age_floor: Option<AgeKeyOwned>,
}

impl Working<'_> {
    pub(crate) fn stack(&self) -> Stack<'_> {
        let layers = self.layers.as_ref().expect("held until finish");
        let file = self.writer.file.as_ref().expect("set by LiveState::begin");
        let below = layers
            .missing_from(file.seq)
            .expect("no layer is dropped while apply holds the writer lock");
        let mut stack = Vec::with_capacity(3);
        stack.push(&self.batch);
        stack.extend(below);
        Stack {
            layers: stack,
            txn: &file.txn,
            opened: Some(&file.opened),
        }
    }

    /// What the previous batch ended with, if nothing changed it since.
    pub(crate) fn take_carried(&mut self) -> Option<Carried> {
        self.writer.carried.take()
    }

    /// Leave `carried` for the next batch (what this one wrote in `sm_meta`).
    pub(crate) fn carry(&mut self, carried: Carried) {
        self.writer.carried = Some(carried);
    }

    /// Write `value` as sealed JSON under `key` of `sm_meta`.
    pub(crate) fn put_meta<T: Serialize>(&mut self, key: &str, value: &T) {
        let json = serde_json::to_vec(value).expect("metadata serializes");
        self.batch
            .meta
            .insert(key.to_string(), checksum::seal(key.as_bytes(), &json));
    }

    /// Lay the batch of `entries` entries and `events` events over the active layer, where
    /// readers see it. When a checkpoint is due ([`Pace`]) and none is under way, freeze the
    /// active layer and return it for [`LiveState::write_frozen`].
    pub(crate) fn finish(mut self, entries: u64, events: u64) -> Option<Arc<Layer>> {
        drop(self.layers.take());
        let mut layers = self.live.write_layers();
        layers.active.state.absorb(std::mem::take(&mut self.batch));
        layers.by_age_floor = self.by_age_floor.take();
        let pace = &mut self.writer.pace;
        pace.since = (pace.since.0 + entries, pace.since.1 + events);
        if (pace.since.0 < pace.every.0 && pace.since.1 < pace.every.1) || layers.frozen.is_some() {
            return None;
        }
        pace.since = (0, 0);
        let next = Layer::empty(layers.active.seq + 1);
        let frozen = Arc::new(std::mem::replace(&mut layers.active, next));
        layers.frozen = Some(frozen.clone());
        Some(frozen)
    }
}
