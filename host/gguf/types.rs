//! The GGUF on-disk vocabulary: tensor element types (ggml types) and metadata value types.

use std::fmt;

/// Every ggml tensor type that has appeared in GGUF files (ggml's `enum ggml_type`; the ids
/// are in [`TYPES`]). A file may hold any of them (`kiln info` lists it); [`GgmlType::supported`]
/// says which ones kiln can dequantize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
}

/// Super-block length of the K-quants (ggml's `QK_K`).
pub const QK_K: usize = 256;
/// Block length of Q8_0 (ggml's `QK8_0`).
pub const QK8_0: usize = 32;
/// Block length of Q4_0, Q4_1, Q5_0, Q5_1 and IQ4_NL (ggml's `QK4_0` = `QK5_0` = `QK4_NL`).
pub const QK4_0: usize = 32;

/// One row of the type table.
#[derive(Clone, Copy, Debug)]
pub struct TypeInfo {
    pub ty: GgmlType,
    /// ggml's `enum ggml_type` value, as stored in a GGUF tensor info.
    pub id: u32,
    pub name: &'static str,
    /// Elements per block (1 for the plain number types).
    pub block_len: usize,
    /// Bytes per block (ggml's `sizeof(block_…)`).
    pub block_bytes: usize,
    /// Whether kiln dequantizes it (`gguf::dequant`).
    pub supported: bool,
}

const fn t(
    ty: GgmlType,
    id: u32,
    name: &'static str,
    block_len: usize,
    block_bytes: usize,
    supported: bool,
) -> TypeInfo {
    TypeInfo {
        ty,
        id,
        name,
        block_len,
        block_bytes,
        supported,
    }
}

/// The one table of ggml types: id, name, block length and block bytes (from ggml's block
/// structs in `ggml-common.h`; the same as gguf-py's `GGML_QUANT_SIZES` except Q8_1, which
/// gguf-py sizes 40 and ggml 36; no GGUF stores Q8_1). Ids 4, 5 and 31-33, 36-38 were removed
/// from ggml and are unknown here.
pub const TYPES: [TypeInfo; 34] = {
    use GgmlType::*;
    [
        t(F32, 0, "F32", 1, 4, true),
        t(F16, 1, "F16", 1, 2, true),
        // f16 d; u8 qs[16]
        t(Q4_0, 2, "Q4_0", QK4_0, 2 + 16, true),
        // f16 d, m; u8 qs[16]
        t(Q4_1, 3, "Q4_1", QK4_0, 4 + 16, true),
        // f16 d; u8 qh[4]; u8 qs[16]
        t(Q5_0, 6, "Q5_0", QK4_0, 2 + 4 + 16, true),
        // f16 d, m; u8 qh[4]; u8 qs[16]
        t(Q5_1, 7, "Q5_1", QK4_0, 4 + 4 + 16, true),
        // f16 d; i8 qs[32]
        t(Q8_0, 8, "Q8_0", QK8_0, 2 + QK8_0, true),
        t(Q8_1, 9, "Q8_1", 32, 4 + 32, false),
        // u8 scales[16]; u8 qs[64]; f16 d, dmin
        t(Q2_K, 10, "Q2_K", QK_K, 16 + 64 + 4, true),
        // u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d
        t(Q3_K, 11, "Q3_K", QK_K, 32 + 64 + 12 + 2, true),
        // f16 d, dmin; u8 scales[12]; u8 qs[128]
        t(Q4_K, 12, "Q4_K", QK_K, 4 + 12 + 128, true),
        // f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
        t(Q5_K, 13, "Q5_K", QK_K, 4 + 12 + 32 + 128, true),
        // u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d
        t(Q6_K, 14, "Q6_K", QK_K, 128 + 64 + 16 + 2, true),
        t(Q8_K, 15, "Q8_K", QK_K, 4 + 256 + 32, false),
        t(IQ2_XXS, 16, "IQ2_XXS", QK_K, 66, false),
        t(IQ2_XS, 17, "IQ2_XS", QK_K, 74, false),
        t(IQ3_XXS, 18, "IQ3_XXS", QK_K, 98, false),
        t(IQ1_S, 19, "IQ1_S", QK_K, 50, false),
        // f16 d; u8 qs[16]
        t(IQ4_NL, 20, "IQ4_NL", QK4_0, 2 + 16, true),
        t(IQ3_S, 21, "IQ3_S", QK_K, 110, false),
        t(IQ2_S, 22, "IQ2_S", QK_K, 82, false),
        // f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]
        t(IQ4_XS, 23, "IQ4_XS", QK_K, 2 + 2 + 4 + 128, true),
        t(I8, 24, "I8", 1, 1, false),
        t(I16, 25, "I16", 1, 2, false),
        t(I32, 26, "I32", 1, 4, false),
        t(I64, 27, "I64", 1, 8, false),
        t(F64, 28, "F64", 1, 8, false),
        t(IQ1_M, 29, "IQ1_M", QK_K, 56, false),
        t(BF16, 30, "BF16", 1, 2, true),
        t(TQ1_0, 34, "TQ1_0", QK_K, 54, false),
        t(TQ2_0, 35, "TQ2_0", QK_K, 66, false),
        t(MXFP4, 39, "MXFP4", 32, 17, false),
        t(NVFP4, 40, "NVFP4", 64, 36, false),
        t(Q1_0, 41, "Q1_0", 128, 18, false),
    ]
};

impl GgmlType {
    /// This type's row of [`TYPES`].
    pub fn info(self) -> &'static TypeInfo {
        // Every variant has exactly one row (checked by a test); the fallback is unreachable.
        TYPES.iter().find(|i| i.ty == self).unwrap_or(&TYPES[0])
    }

    pub fn from_u32(v: u32) -> Option<Self> {
        TYPES.iter().find(|i| i.id == v).map(|i| i.ty)
    }

    pub fn as_u32(self) -> u32 {
        self.info().id
    }

    /// Elements per block (1 for the plain number types).
    pub fn block_len(self) -> usize {
        self.info().block_len
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.info().block_bytes
    }

    /// Whether kiln can dequantize this type.
    pub fn supported(self) -> bool {
        self.info().supported
    }

    /// Bytes for `n_elements` elements, or `None` if `n_elements` is not a whole number of
    /// blocks or the size overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let bl = self.block_len() as u64;
        if !n_elements.is_multiple_of(bl) {
            return None;
        }
        (n_elements / bl).checked_mul(self.block_bytes() as u64)
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Parses the names `name()` prints, case-insensitively (used by the CLI).
    pub fn parse(s: &str) -> Option<Self> {
        TYPES
            .iter()
            .find(|i| i.name.eq_ignore_ascii_case(s))
            .map(|i| i.ty)
    }

    /// `"Q4_1 (type 3)"`: the name and ggml id, for messages.
    pub fn describe(self) -> String {
        format!("{} (type {})", self.name(), self.as_u32())
    }

    /// The names of the types kiln dequantizes, comma-separated.
    pub fn supported_list() -> String {
        let names: Vec<&str> = TYPES
            .iter()
            .filter(|i| i.supported)
            .map(|i| i.name)
            .collect();
        names.join(", ")
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// GGUF metadata value types (`enum gguf_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn from_u32(v: u32) -> Option<Self> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn as_u32(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// The fewest bytes one value of this type occupies in a file: a string is at least its
    /// u64 length, an array at least its u32 type and u64 count. Used to reject counts that
    /// could not fit in the remaining bytes before allocating for them.
    pub fn min_encoded_len(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
            String => 8,
            Array => 12,
        }
    }
}

/// One metadata value. Arrays keep their declared element type so that an empty array
/// round-trips and so that a writer can reproduce the file.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value that is non-negative and fits in a u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A short rendering for `kiln info`: long arrays are summarised.
    pub fn summary(&self) -> String {
        match self {
            Value::String(s) => format!("{s:?}"),
            Value::Array(t, items) => {
                let head: Vec<String> = items.iter().take(3).map(|v| v.summary()).collect();
                let more = if items.len() > 3 { ", ..." } else { "" };
                format!("[{:?} x {}] {}{more}", t, items.len(), head.join(", "))
            }
            Value::U8(v) => v.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::U64(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
        }
    }
}
