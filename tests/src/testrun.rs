//! BPF_PROG_TEST_RUN wrapper (verdict tables and micro-benchmarks).
