//! Writing GGUF v3 files. Tensor data is produced one tensor at a time by a callback, so a
//! file far larger than memory (a 30B-parameter synthetic model) can be streamed to disk.

use std::io::Write;

use super::reader::GgufFile;
use super::types::{GgmlType, Value};
use super::{DEFAULT_ALIGNMENT, GgufError, Result};

/// A tensor to be written: its data comes later, from the writer's callback.
#[derive(Clone, Debug)]
pub struct TensorDesc {
    pub name: String,
    pub dtype: GgmlType,
    /// GGUF `ne` order (fastest-varying first).
    pub shape: Vec<u64>,
}

impl TensorDesc {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
    pub fn n_bytes(&self) -> u64 {
        // Synthetic shapes are whole blocks; a bad one is caught when the data is written.
        self.dtype.bytes_for(self.n_elements()).unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
pub struct GgufWriter {
    kv: Vec<(String, Value)>,
    tensors: Vec<TensorDesc>,
    alignment: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter {
            kv: Vec::new(),
            tensors: Vec::new(),
            alignment: DEFAULT_ALIGNMENT,
        }
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `alignment` (a power of two) for tensor data and records it as `general.alignment`.
    pub fn set_alignment(&mut self, alignment: u32) {
        self.alignment = u64::from(alignment);
        self.kv.retain(|(k, _)| k != "general.alignment");
        self.kv
            .push(("general.alignment".into(), Value::U32(alignment)));
    }

    /// A writer with `file`'s metadata and tensor table (in file order), e.g. to rewrite a file
    /// with edits; feed it `file.tensor(name)`'s bytes.
    pub fn copy_of(file: &GgufFile) -> Self {
        let mut w = GgufWriter::new();
        for (k, v) in file.metadata() {
            match (k.as_str(), v) {
                ("general.alignment", Value::U32(a)) => w.set_alignment(*a),
                _ => w.add_kv(k.clone(), v.clone()),
            }
        }
        for t in file.tensor_infos() {
            w.add_tensor(t.name.clone(), t.dtype, t.shape.clone());
        }
        w
    }

    pub fn add_kv(&mut self, key: impl Into<String>, value: Value) {
        self.kv.push((key.into(), value));
    }

    /// Replaces `key`'s value in place, or appends it.
    pub fn set_kv(&mut self, key: &str, value: Value) {
        match self.kv.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.kv.push((key.to_string(), value)),
        }
    }

    pub fn remove_kv(&mut self, key: &str) {
        self.kv.retain(|(k, _)| k != key);
    }

    pub fn tensors_mut(&mut self) -> &mut Vec<TensorDesc> {
        &mut self.tensors
    }

    pub fn add_tensor(&mut self, name: impl Into<String>, dtype: GgmlType, shape: Vec<u64>) {
        self.tensors.push(TensorDesc {
            name: name.into(),
            dtype,
            shape,
        });
    }

    pub fn tensors(&self) -> &[TensorDesc] {
        &self.tensors
    }

    /// Total file size this writer will produce.
    pub fn file_len(&self) -> u64 {
        let mut header = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_header(&mut header);
        let data_start = self.align(header.len() as u64);
        data_start + self.data_len()
    }

    fn data_len(&self) -> u64 {
        self.tensors.iter().map(|t| self.align(t.n_bytes())).sum()
    }

    fn align(&self, n: u64) -> u64 {
        n.div_ceil(self.alignment) * self.alignment
    }

    fn write_header(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(b"GGUF")?;
        w.write_all(&3u32.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.kv.len() as u64).to_le_bytes())?;
        for (k, v) in &self.kv {
            write_string(w, k)?;
            w.write_all(&v.value_type().as_u32().to_le_bytes())?;
            write_value(w, v)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_string(w, &t.name)?;
            w.write_all(&(t.shape.len() as u32).to_le_bytes())?;
            for &ne in &t.shape {
                w.write_all(&ne.to_le_bytes())?;
            }
            w.write_all(&t.dtype.as_u32().to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            offset += self.align(t.n_bytes());
        }
        Ok(())
    }

    /// Writes the file. `data(i, desc)` returns tensor `i`'s bytes, which must be exactly
    /// `desc.n_bytes()` long.
    pub fn write<W: Write>(
        &self,
        w: &mut W,
        mut data: impl FnMut(usize, &TensorDesc) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let mut header = Vec::new();
        self.write_header(&mut header).map_err(GgufError::Write)?;
        let pad = self.align(header.len() as u64) - header.len() as u64;
        header.resize(header.len() + pad as usize, 0);
        w.write_all(&header).map_err(GgufError::Write)?;
        for (i, t) in self.tensors.iter().enumerate() {
            let bytes = data(i, t)?;
            let expected =
                t.dtype
                    .bytes_for(t.n_elements())
                    .ok_or_else(|| GgufError::BadTensor {
                        tensor: t.name.clone(),
                        reason: format!("shape {:?} is not whole {} blocks", t.shape, t.dtype),
                    })?;
            if bytes.len() as u64 != expected {
                return Err(GgufError::BadTensor {
                    tensor: t.name.clone(),
                    reason: format!("writer got {} bytes, expected {expected}", bytes.len()),
                });
            }
            w.write_all(&bytes).map_err(GgufError::Write)?;
            let pad = self.align(expected) - expected;
            w.write_all(&vec![0u8; pad as usize])
                .map_err(GgufError::Write)?;
        }
        Ok(())
    }

    /// Writes the whole file into memory.
    pub fn to_bytes(
        &self,
        data: impl FnMut(usize, &TensorDesc) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.file_len() as usize);
        self.write(&mut out, data)?;
        Ok(out)
    }
}

fn write_string(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[u8::from(*x)]),
        Value::String(s) => write_string(w, s),
        Value::Array(ty, items) => {
            w.write_all(&ty.as_u32().to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|item| write_value(w, item))
        }
    }
}
