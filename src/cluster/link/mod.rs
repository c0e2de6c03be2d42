//! The inter-node link: authenticated TCP connections between nodes carrying request/response
//! calls (Raft RPCs, forwarded operations).
