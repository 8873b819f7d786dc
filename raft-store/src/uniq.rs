//! Uniq sets inside apply: check every claim of a request against the sets and the earlier
//! events of the same request, then write owners and history only if all pass.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableTable, Table};

use crate::error::StoreError;
use crate::rules::UniqOp;
use crate::tables::{HistoryKey, SealedOwner, STILL_OWNED};
use crate::types::{Conflict, UniqClaim};

pub(crate) struct UniqTables<'txn> {
    pub owners: Table<'txn, (&'static str, &'static str), SealedOwner>,
    pub history: Table<'txn, HistoryKey, SealedOwner>,
}

/// A change decided but not yet written.
#[derive(Debug, Clone)]
enum Change {
    Claim {
        set: String,
        key: String,
        owner: String,
        offset: u64,
    },
    Release {
        set: String,
        key: String,
        offset: u64,
    },
}

/// The pending changes of one request (or one backfill), with a view of owners that includes
/// them.
#[derive(Default)]
pub(crate) struct Pending {
    view: BTreeMap<(String, String), Option<String>>,
    /// Sets being rebuilt from scratch: their stored owners do not count.
    rebuilding: BTreeSet<String>,
    changes: Vec<Change>,
}

impl Pending {
    /// Treat `set` as empty apart from the changes recorded here.
    pub fn rebuild(&mut self, set: &str) {
        self.rebuilding.insert(set.to_string());
    }

    fn owner(
        &self,
        t: &UniqTables<'_>,
        set: &str,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        if let Some(o) = self.view.get(&(set.to_string(), key.to_string())) {
            return Ok(o.clone());
        }
        if self.rebuilding.contains(set) {
            return Ok(None);
        }
        Ok(t.owners.get((set, key))?.map(|g| g.value().0.to_string()))
    }

    fn claim(&mut self, set: &str, key: &str, owner: &str, offset: u64) {
        self.view
            .insert((set.into(), key.into()), Some(owner.into()));
        self.changes.push(Change::Claim {
            set: set.into(),
            key: key.into(),
            owner: owner.into(),
            offset,
        });
    }

    fn release(&mut self, set: &str, key: &str, offset: u64) {
        self.view.insert((set.into(), key.into()), None);
        self.changes.push(Change::Release {
            set: set.into(),
            key: key.into(),
            offset,
        });
    }

    /// Check one claim of the event at `offset` owned by `stream`, and record its changes.
    pub fn check(
        &mut self,
        t: &UniqTables<'_>,
        claim: &UniqClaim,
        stream: &str,
        offset: u64,
    ) -> Result<Result<(), Conflict>, StoreError> {
        let set = claim.set.as_str();
        let not_owner = |key: &str, owner| Conflict::UniqNotOwner {
            set: set.into(),
            key: key.into(),
            owner,
        };
        match claim.op {
            UniqOp::Create => match self.owner(t, set, &claim.key)? {
                Some(o) if o == stream => {}
                // Planted bug (simulation builds only, `crate::planted`): the HTTP side
                // decided, so apply lets the claim take the key.
                #[cfg(madsim)]
                Some(_) if crate::planted::is(crate::planted::Bug::UniqInHandler) => {
                    self.claim(set, &claim.key, stream, offset)
                }
                Some(o) => {
                    return Ok(Err(Conflict::Uniq {
                        set: set.into(),
                        key: claim.key.clone(),
                        owner: o,
                    }))
                }
                None => self.claim(set, &claim.key, stream, offset),
            },
            UniqOp::Update => {
                let old = claim.old_key.as_deref().unwrap_or(&claim.key);
                let old_owner = self.owner(t, set, old)?;
                if old_owner.as_deref() != Some(stream) {
                    return Ok(Err(not_owner(old, old_owner)));
                }
                if old != claim.key {
                    match self.owner(t, set, &claim.key)? {
                        // Planted bug (simulation builds only, `crate::planted`): the HTTP
                        // side decided, so apply lets the claim take the key.
                        #[cfg(madsim)]
                        Some(o)
                            if o != stream
                                && crate::planted::is(crate::planted::Bug::UniqInHandler) =>
                        {
                            self.claim(set, &claim.key, stream, offset)
                        }
                        Some(o) if o != stream => {
                            return Ok(Err(Conflict::Uniq {
                                set: set.into(),
                                key: claim.key.clone(),
                                owner: o,
                            }))
                        }
                        Some(_) => {}
                        None => self.claim(set, &claim.key, stream, offset),
                    }
                    self.release(set, old, offset);
                }
            }
            UniqOp::Delete => {
                let owner = self.owner(t, set, &claim.key)?;
                if owner.as_deref() != Some(stream) {
                    return Ok(Err(not_owner(&claim.key, owner)));
                }
                self.release(set, &claim.key, offset);
            }
        }
        Ok(Ok(()))
    }

    /// Write the decided changes: owners and their history.
    pub fn write(self, t: &mut UniqTables<'_>) -> Result<(), StoreError> {
        for change in self.changes {
            match change {
                Change::Claim {
                    set,
                    key,
                    owner,
                    offset,
                } => {
                    t.owners
                        .insert((set.as_str(), key.as_str()), (owner.as_str(), offset))?;
                    t.history.insert(
                        (set.as_str(), key.as_str(), offset),
                        (owner.as_str(), STILL_OWNED),
                    )?;
                }
                Change::Release { set, key, offset } => {
                    let since = t.owners.remove((set.as_str(), key.as_str()))?.map(|g| {
                        let (owner, since) = g.value();
                        (owner.to_string(), since)
                    });
                    if let Some((owner, since)) = since {
                        t.history.insert(
                            (set.as_str(), key.as_str(), since),
                            (owner.as_str(), offset),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Remove a set's owners and history (the set was dropped or is rebuilt).
pub(crate) fn clear_set(t: &mut UniqTables<'_>, set: &str) -> Result<(), StoreError> {
    // Rare (a rules change), so a full pass is fine.
    t.owners.retain(|(s, _), _| s != set)?;
    t.history.retain(|(s, _, _), _| s != set)?;
    Ok(())
}
