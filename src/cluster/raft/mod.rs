//! Cluster membership and the replicated key-value store on openraft.
