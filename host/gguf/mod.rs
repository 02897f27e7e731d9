//! GGUF reader, dequantisation and writer.
