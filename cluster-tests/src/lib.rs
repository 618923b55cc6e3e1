//! Multi-process cluster tests (arrive with the cluster issue).
