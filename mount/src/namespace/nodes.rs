//! FUSE node ids: which object of the mount a node id names, encoded in the id itself so that
//! the frontend keeps no per-node table.
//!
//! - `1`: the mount's root (one folder per volume).
//! - bit 63 set: a daemon-made node; bits 56..63 say which kind, the low 32 bits a volume's or a
//!   copy's serial (serials are never reused while the daemon runs).
//! - otherwise: a node inside a copy's filesystem: the copy's serial in bits 40..63 and the
//!   filesystem's own inode number in bits 0..40.
//!
//! `stat` shows the filesystem's inode number for nodes inside a copy (as the original volume
//! did), and the node id for daemon-made nodes (which never collides with those: bit 63).

const SYNTHETIC: u64 = 1 << 63;
const INO_BITS: u32 = 40;
const INO_MASK: u64 = (1 << INO_BITS) - 1;
const MAX_COPY_SERIAL: u32 = (1 << 23) - 1;

/// An object of the mount, as its node id encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// The mount's root.
    Root,
    /// `<mnt>/<volume>/`
    VolumeDir(u32),
    /// `<mnt>/<volume>/live`
    Live(u32),
    /// `<mnt>/<volume>/.images/`
    ImagesDir(u32),
    /// `<mnt>/<volume>/.images/@GMT-….img` (a copy's serial)
    Image(u32),
    /// A file or directory inside a copy's filesystem.
    Tree {
        /// The copy's serial.
        copy: u32,
        /// The inode number in the copy's filesystem.
        ino: u64,
    },
}

impl Node {
    /// The node id, or `None` when the parts do not fit (an inode number of 2^40 or more).
    pub fn id(self) -> Option<u64> {
        let synth = |kind: u64, serial: u32| SYNTHETIC | kind << 56 | u64::from(serial);
        Some(match self {
            Node::Root => 1,
            Node::VolumeDir(s) => synth(1, s),
            Node::Live(s) => synth(2, s),
            Node::ImagesDir(s) => synth(3, s),
            Node::Image(s) => synth(4, s),
            Node::Tree { copy, ino } => {
                if copy == 0 || copy > MAX_COPY_SERIAL || ino > INO_MASK {
                    return None;
                }
                u64::from(copy) << INO_BITS | ino
            }
        })
    }

    /// The object node `id` names; `None` for an id this encoding never gives.
    pub fn from_id(id: u64) -> Option<Node> {
        if id == 1 {
            return Some(Node::Root);
        }
        if id & SYNTHETIC != 0 {
            let serial = id as u32;
            return match (id >> 56) & 0x7f {
                1 => Some(Node::VolumeDir(serial)),
                2 => Some(Node::Live(serial)),
                3 => Some(Node::ImagesDir(serial)),
                4 => Some(Node::Image(serial)),
                _ => None,
            };
        }
        let copy = (id >> INO_BITS) as u32;
        (copy != 0).then_some(Node::Tree { copy, ino: id & INO_MASK })
    }

    /// The inode number `stat` shows.
    pub fn st_ino(self) -> u64 {
        match self {
            Node::Tree { ino, .. } => ino,
            other => other.id().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_never_collide() {
        let nodes = [
            Node::Root,
            Node::VolumeDir(1),
            Node::Live(1),
            Node::ImagesDir(1),
            Node::Image(7),
            Node::Tree { copy: 7, ino: 2 },
            Node::Tree { copy: MAX_COPY_SERIAL, ino: INO_MASK },
        ];
        let ids: Vec<u64> = nodes.iter().map(|n| n.id().unwrap()).collect();
        for (n, id) in nodes.iter().zip(&ids) {
            assert_eq!(Node::from_id(*id), Some(*n));
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert_eq!(Node::Tree { copy: 0, ino: 2 }.id(), None);
        assert_eq!(Node::Tree { copy: 1, ino: 1 << 40 }.id(), None);
        assert_eq!(Node::from_id(2), None, "a tree id needs a copy serial");
    }
}
