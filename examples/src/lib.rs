//! Runnable programs showing cmwq at work; see the binaries in `src/bin/`.
