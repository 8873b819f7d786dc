//! Uniq sets inside apply: check every claim of a request against the sets and the earlier
//! events of the same request, then write owners and history only if all pass.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::StoreError;
use crate::live::Working;
use crate::rules::UniqOp;
use crate::types::{Conflict, UniqClaim};

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

    fn owner(&self, t: &Working<'_>, set: &str, key: &str) -> Result<Option<String>, StoreError> {
        // Most requests make one claim: no view to look in, and no key to build for it.
        if !self.view.is_empty() {
            if let Some(o) = self.view.get(&(set.to_string(), key.to_string())) {
                return Ok(o.clone());
            }
        }
        if self.rebuilding.contains(set) {
            return Ok(None);
        }
        Ok(t.stack().owner(set, key)?.map(|(owner, _)| owner))
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
        t: &Working<'_>,
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

    /// Write the decided changes: owners, and the history of released keys. A key's current
    /// owner is its history's last row (`Stack::key_history`), so a claim writes one row, not
    /// two: most keys are never released, and every row costs apply and the checkpoint on
    /// every node.
    pub fn write(self, t: &mut Working<'_>) -> Result<(), StoreError> {
        for change in self.changes {
            match change {
                Change::Claim {
                    set,
                    key,
                    owner,
                    offset,
                } => {
                    t.batch.uniq_owners.insert((set, key), (owner, offset));
                }
                Change::Release { set, key, offset } => {
                    if let Some((owner, since)) = t.stack().owner(&set, &key)? {
                        t.batch
                            .uniq_history
                            .insert((set.clone(), key.clone(), since), (owner, offset));
                    }
                    t.batch.uniq_owners.remove((set, key));
                }
            }
        }
        Ok(())
    }
}

/// Remove a set's owners and history (the set was dropped or is rebuilt).
pub(crate) fn clear_set(t: &mut Working<'_>, set: &str) -> Result<(), StoreError> {
    // Rare (a rules change), so a full pass is fine.
    let (owners, history) = {
        let stack = t.stack();
        let owners: Vec<_> = stack
            .owners()?
            .filter(|row| !matches!(row, Ok(((s, _), _)) if s != set))
            .map(|row| row.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        let history: Vec<_> = stack
            .history()?
            .filter(|row| !matches!(row, Ok(((s, _, _), _)) if s != set))
            .map(|row| row.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        (owners, history)
    };
    for k in owners {
        t.batch.uniq_owners.remove(k);
    }
    for k in history {
        t.batch.uniq_history.remove(k);
    }
    Ok(())
}
