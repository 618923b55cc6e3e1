//! ioswarm
