//! Nearest-neighbour indexes over embedding vectors (exact flat index and HNSW).
