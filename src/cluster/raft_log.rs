//! A Raft log (openraft's `RaftLogStorage`) kept in Warren's segment log.
