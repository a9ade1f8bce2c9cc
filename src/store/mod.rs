//! Durable storage of collections, items, vectors and original content.
