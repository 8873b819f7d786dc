//! Every bug the simulator can plant, by name: storage's and the node's
//! (`raft_store::planted`) and the consumers' (`consumers::planted`), each planted through the
//! switch of the crate whose code it breaks.

/// A bug to plant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    Store(raft_store::planted::Bug),
    Consumer(consumers::planted::Bug),
}

impl Bug {
    /// Every bug, storage's first.
    pub fn all() -> impl Iterator<Item = Bug> {
        raft_store::planted::Bug::ALL
            .into_iter()
            .map(Bug::Store)
            .chain(consumers::planted::Bug::ALL.into_iter().map(Bug::Consumer))
    }

    /// The name on the command line (`simulate --plant <name>`).
    pub fn name(self) -> &'static str {
        match self {
            Bug::Store(b) => b.name(),
            Bug::Consumer(b) => b.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::all().find(|b| b.name() == name)
    }
}

/// Plant `bug` (or none) for the whole process: the seed runner sets it before the
/// simulation starts, so every node and consumer runs with the same bug.
pub fn plant(bug: Option<Bug>) {
    raft_store::planted::plant(match bug {
        Some(Bug::Store(b)) => Some(b),
        _ => None,
    });
    consumers::planted::plant(match bug {
        Some(Bug::Consumer(b)) => Some(b),
        _ => None,
    });
}
