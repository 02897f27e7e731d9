//! Parsing a GGUF file (memory-mapped or owned bytes) into metadata and tensor views.
//!
//! Every count, length and offset read from the file is checked against the bytes that remain
//! before it is used; nothing is allocated from an unchecked count.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::types::{GgmlType, Value, ValueType};
use super::{DEFAULT_ALIGNMENT, GgufError, MAX_ARRAY_NESTING, MAX_DIMS, Result, dequant};

/// Where the file's bytes live: a read-only mapping of a file, or a buffer (synthetic models,
/// tests, fuzzing).
enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// One tensor's description from the tensor-info table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: GgmlType,
    /// GGUF `ne` order: `shape[0]` is the fastest-varying (row length).
    pub shape: Vec<u64>,
    /// Offset of the data from the start of the file.
    pub file_offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A tensor's description together with its raw bytes.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    pub info: &'a TensorInfo,
    pub data: &'a [u8],
}

impl Tensor<'_> {
    pub fn name(&self) -> &str {
        &self.info.name
    }
    pub fn dtype(&self) -> GgmlType {
        self.info.dtype
    }
    pub fn shape(&self) -> &[u64] {
        &self.info.shape
    }
    pub fn dequantize_f32(&self) -> Result<Vec<f32>> {
        if !self.info.dtype.supported() {
            return Err(GgufError::UnsupportedDtype {
                tensor: self.info.name.clone(),
                dtype: self.info.dtype,
            });
        }
        dequant::dequantize(self.info.dtype, self.data).map_err(|reason| GgufError::Dequant {
            tensor: self.info.name.clone(),
            dtype: self.info.dtype,
            reason,
        })
    }
}

pub struct GgufFile {
    backing: Backing,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        // mmap of a directory or a device fails with a baffling errno ("No such device").
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() {
            let kind = if meta.is_dir() {
                "a directory"
            } else {
                "a special file (a device, pipe or socket)"
            };
            return Err(GgufError::NotAFile {
                path: path.to_path_buf(),
                kind,
            });
        }
        // SAFETY: the mapping is read-only and private to this process. Another process
        // truncating or rewriting the file while it is mapped is outside what kiln defends
        // against (the same caveat as every mmap-based model loader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        Self::parse(Backing::Mmap(mmap))
    }

    /// Parses a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(backing: Backing) -> Result<Self> {
        let bytes = backing.bytes();
        let mut c = Cursor { bytes, pos: 0 };

        let magic = c.take(4, "magic")?;
        if magic != b"GGUF" {
            return Err(GgufError::BadMagic {
                found: magic.to_vec(),
            });
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info
        // at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
        c.check_count(n_kv, 13, "metadata count")?;
        c.check_count(n_tensors, 24, "tensor count")?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut key_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = c.string(&format!("key of metadata pair {i}"))?;
            let ty_off = c.pos;
            let ty = c.u32(&format!("value type of {key:?}"))?;
            let ty = ValueType::from_u32(ty).ok_or_else(|| GgufError::Malformed {
                what: format!("value of {key:?}"),
                offset: ty_off as u64,
                reason: format!("unknown value type {ty}"),
            })?;
            let value = c.value(ty, &key, 0)?;
            if key_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::DuplicateKey(key));
            }
            metadata.push((key, value));
        }

        super::keys::check_types(&metadata)?;
        let alignment = match key_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => match metadata[i].1 {
                Value::U32(a) if a != 0 && a.is_power_of_two() => u64::from(a),
                ref other => {
                    return Err(GgufError::Malformed {
                        what: "general.alignment".into(),
                        offset: 0,
                        reason: format!("must be a non-zero power-of-two u32, found {other:?}"),
                    });
                }
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        let mut rel_offsets = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("name of tensor {i}"))?;
            let dims_off = c.pos as u64;
            let n_dims = c.u32(&format!("n_dims of tensor {name:?}"))?;
            if n_dims == 0 || n_dims as usize > MAX_DIMS {
                return Err(GgufError::Malformed {
                    what: format!("tensor {name:?}"),
                    offset: dims_off,
                    reason: format!("n_dims {n_dims} not in 1..={MAX_DIMS}"),
                });
            }
            let mut shape = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let off = c.pos as u64;
                let ne = c.u64(&format!("dimension {d} of tensor {name:?}"))?;
                // ne is an int64 in ggml: reject anything that would be negative there.
                if ne == 0 || ne > i64::MAX as u64 {
                    return Err(GgufError::Malformed {
                        what: format!("dimension {d} of tensor {name:?}"),
                        offset: off,
                        reason: format!("invalid size {ne}"),
                    });
                }
                shape.push(ne);
            }
            let ty = c.u32(&format!("type of tensor {name:?}"))?;
            let dtype = GgmlType::from_u32(ty).ok_or_else(|| GgufError::UnknownDtype {
                tensor: name.clone(),
                ty,
            })?;
            let rel = c.u64(&format!("data offset of tensor {name:?}"))?;
            let n_elements = shape
                .iter()
                .try_fold(1u64, |acc, &ne| acc.checked_mul(ne))
                .ok_or_else(|| GgufError::BadTensor {
                    tensor: name.clone(),
                    reason: format!("element count of shape {shape:?} overflows"),
                })?;
            if shape[0] % dtype.block_len() as u64 != 0 {
                return Err(GgufError::BadTensor {
                    tensor: name.clone(),
                    reason: format!(
                        "row length {} is not a multiple of the {dtype} block length {}",
                        shape[0],
                        dtype.block_len()
                    ),
                });
            }
            let n_bytes = dtype
                .bytes_for(n_elements)
                .ok_or_else(|| GgufError::BadTensor {
                    tensor: name.clone(),
                    reason: format!("byte size of shape {shape:?} overflows"),
                })?;
            if rel % alignment != 0 {
                return Err(GgufError::BadTensor {
                    tensor: name.clone(),
                    reason: format!("data offset {rel} is not a multiple of alignment {alignment}"),
                });
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::DuplicateTensor(name));
            }
            rel_offsets.push(rel);
            tensors.push(TensorInfo {
                name,
                dtype,
                shape,
                file_offset: 0,
                n_bytes,
            });
        }

        let file_len = bytes.len() as u64;
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        for (t, &rel) in tensors.iter_mut().zip(&rel_offsets) {
            let range = data_offset
                .checked_add(rel)
                .and_then(|s| s.checked_add(t.n_bytes).map(|e| (s, e)));
            match range {
                Some((start, end)) if end <= file_len => t.file_offset = start,
                _ => {
                    return Err(GgufError::TensorOutOfRange {
                        tensor: t.name.clone(),
                        start: data_offset.saturating_add(rel),
                        end: data_offset.saturating_add(rel).saturating_add(t.n_bytes),
                        file_len,
                    });
                }
            }
        }
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.file_offset);
        for w in by_offset.windows(2) {
            if w[0].file_offset + w[0].n_bytes > w[1].file_offset {
                return Err(GgufError::TensorOverlap {
                    a: w[0].name.clone(),
                    b: w[1].name.clone(),
                });
            }
        }

        Ok(GgufFile {
            backing,
            version,
            alignment,
            data_offset,
            metadata,
            key_index,
            tensors,
            tensor_index,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// File offset where the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    pub fn file_len(&self) -> u64 {
        self.backing.bytes().len() as u64
    }

    /// Metadata pairs in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    fn wrong_type(key: &str, expected: &'static str, v: &Value) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            expected,
            found: format!("{:?}", v.value_type()),
        }
    }

    /// Any non-negative integer type that fits in a u64.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| Self::wrong_type(key, "a non-negative integer", v))
    }

    /// Any non-negative integer type that fits in a u32.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.get_u64(key)?;
        u32::try_from(v).map_err(|_| GgufError::WrongType {
            key: key.to_string(),
            expected: "an integer that fits in u32",
            found: v.to_string(),
        })
    }

    /// F32, F64 or an integer, as f32.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| Self::wrong_type(key, "a number", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(Self::wrong_type(key, "a bool", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| Self::wrong_type(key, "a string", v))
    }

    /// An array value's elements.
    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        match self.require(key)? {
            Value::Array(_, items) => Ok(items),
            v => Err(Self::wrong_type(key, "an array", v)),
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// Tensor infos in file order (which is not meaningful: look tensors up by name).
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensor_index.contains_key(name)
    }

    pub fn tensor(&self, name: &str) -> Result<Tensor<'_>> {
        let &i = self
            .tensor_index
            .get(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        let info = &self.tensors[i];
        // Ranges were checked against the file length in `parse`.
        let start = info.file_offset as usize;
        let data = &self.backing.bytes()[start..start + info.n_bytes as usize];
        Ok(Tensor { info, data })
    }

    pub fn dequantize_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.tensor(name)?.dequantize_f32()
    }
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.pos as u64,
                need: n,
                len: self.bytes.len() as u64,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Rejects `count` items of at least `min_len` bytes each that cannot fit in what is left.
    fn check_count(&self, count: u64, min_len: u64, what: &str) -> Result<()> {
        match count.checked_mul(min_len) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(GgufError::CountTooLarge {
                what: what.to_string(),
                offset: self.pos as u64,
                count,
                remaining: self.remaining(),
            }),
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let off = self.pos as u64;
        let len = self.u64(what)?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|e| GgufError::Malformed {
            what: what.to_string(),
            offset: off,
            reason: format!("invalid UTF-8: {e}"),
        })
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value> {
        let what = || format!("value of {key:?}");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(&what())?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(&what())?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what())?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what())?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what())?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what())?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what())?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what())?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what())?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what())?)),
            ValueType::Bool => {
                let off = self.pos as u64;
                match self.array::<1>(&what())?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(GgufError::Malformed {
                            what: what(),
                            offset: off,
                            reason: format!("bool byte {b} is neither 0 nor 1"),
                        });
                    }
                }
            }
            ValueType::String => Value::String(self.string(&what())?),
            ValueType::Array => {
                let off = self.pos as u64;
                if depth >= MAX_ARRAY_NESTING {
                    return Err(GgufError::Malformed {
                        what: what(),
                        offset: off,
                        reason: format!("arrays nested deeper than {MAX_ARRAY_NESTING}"),
                    });
                }
                let raw_ty = self.u32(&format!("element type of {key:?}"))?;
                let elem_ty = ValueType::from_u32(raw_ty).ok_or_else(|| GgufError::Malformed {
                    what: what(),
                    offset: off,
                    reason: format!("unknown array element type {raw_ty}"),
                })?;
                let count = self.u64(&format!("element count of {key:?}"))?;
                self.check_count(count, elem_ty.min_encoded_len(), &format!("array {key:?}"))?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(elem_ty, items)
            }
        })
    }
}
