//! The GGUF on-disk vocabulary: tensor element types (ggml types) and metadata value types.

use std::fmt;

/// The ggml tensor types a GGUF file can hold (ggml's `enum ggml_type`, with its numeric
/// values). The reader knows every one's block size, so it can lay out and show any file;
/// kiln dequantizes and runs only [`GgmlType::SUPPORTED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
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
}

/// Super-block length of the K-quants (ggml's `QK_K`).
pub const QK_K: usize = 256;
/// Block length of Q8_0 (ggml's `QK8_0`).
pub const QK8_0: usize = 32;

/// Every type: (ggml id, type, name, elements per block, bytes per block), from ggml's
/// `enum ggml_type` and its type traits (gguf-py's `GGML_QUANT_SIZES`). Ids 4, 5 and 31-33,
/// 36-38 were removed from ggml and cannot appear in a GGUF file.
const TYPES: [(u32, GgmlType, &str, usize, usize); 32] = {
    use GgmlType::*;
    [
        (0, F32, "F32", 1, 4),
        (1, F16, "F16", 1, 2),
        (2, Q4_0, "Q4_0", 32, 2 + 16),
        (3, Q4_1, "Q4_1", 32, 2 + 2 + 16),
        (6, Q5_0, "Q5_0", 32, 2 + 4 + 16),
        (7, Q5_1, "Q5_1", 32, 2 + 2 + 4 + 16),
        // Q8_0 = f16 d + 32 i8.
        (8, Q8_0, "Q8_0", QK8_0, 2 + QK8_0),
        (9, Q8_1, "Q8_1", 32, 2 + 2 + 32),
        (10, Q2_K, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
        (11, Q3_K, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
        // Q4_K = f16 d + f16 dmin + 12 scale bytes + 128 nibble bytes.
        (12, Q4_K, "Q4_K", QK_K, 2 + 2 + 12 + QK_K / 2),
        (13, Q5_K, "Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
        // Q6_K = 128 low-nibble bytes + 64 high-bit bytes + 16 i8 scales + f16 d.
        (14, Q6_K, "Q6_K", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2),
        (15, Q8_K, "Q8_K", QK_K, 4 + QK_K + QK_K / 8),
        (16, IQ2_XXS, "IQ2_XXS", QK_K, 2 + QK_K / 4),
        (17, IQ2_XS, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32),
        (18, IQ3_XXS, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8),
        (19, IQ1_S, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
        (20, IQ4_NL, "IQ4_NL", 32, 2 + 16),
        (
            21,
            IQ3_S,
            "IQ3_S",
            QK_K,
            2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4,
        ),
        (22, IQ2_S, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
        (23, IQ4_XS, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
        (24, I8, "I8", 1, 1),
        (25, I16, "I16", 1, 2),
        (26, I32, "I32", 1, 4),
        (27, I64, "I64", 1, 8),
        (28, F64, "F64", 1, 8),
        (29, IQ1_M, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
        (30, BF16, "BF16", 1, 2),
        (34, TQ1_0, "TQ1_0", QK_K, 2 + 4 * 13),
        (35, TQ2_0, "TQ2_0", QK_K, 2 + 64),
        (39, MXFP4, "MXFP4", 32, 1 + 16),
    ]
};

impl GgmlType {
    /// The types kiln dequantizes (and so can run).
    pub const SUPPORTED: [GgmlType; 6] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];

    fn row(self) -> &'static (u32, GgmlType, &'static str, usize, usize) {
        // Every variant has a row (checked by a unit test).
        TYPES.iter().find(|r| r.1 == self).unwrap_or(&TYPES[0])
    }

    /// The type with ggml id `v`, `None` for an id ggml does not define.
    pub fn from_u32(v: u32) -> Option<Self> {
        TYPES.iter().find(|r| r.0 == v).map(|r| r.1)
    }

    pub fn as_u32(self) -> u32 {
        self.row().0
    }

    /// Whether kiln can dequantize (and so run) tensors of this type.
    pub fn is_supported(self) -> bool {
        Self::SUPPORTED.contains(&self)
    }

    /// "F32, F16, BF16, Q8_0, Q4_K, Q6_K": the supported types, for messages.
    pub fn supported_list() -> String {
        let names: Vec<&str> = Self::SUPPORTED.iter().map(|t| t.name()).collect();
        names.join(", ")
    }

    /// Elements per block (1 for the plain types).
    pub fn block_len(self) -> usize {
        self.row().3
    }

    /// Bytes per block, from ggml's block structs.
    pub fn block_bytes(self) -> usize {
        self.row().4
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
        self.row().2
    }

    /// Parses the names `name()` prints, case-insensitively (used by the CLI).
    pub fn parse(s: &str) -> Option<Self> {
        TYPES
            .iter()
            .find(|r| r.2.eq_ignore_ascii_case(s))
            .map(|r| r.1)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_one_row_and_round_trips() {
        for (id, t, name, ..) in TYPES {
            assert_eq!(TYPES.iter().filter(|r| r.1 == t).count(), 1, "{name}");
            assert_eq!((t.as_u32(), t.name()), (id, name));
            assert_eq!(GgmlType::from_u32(id), Some(t));
            assert_eq!(GgmlType::parse(&name.to_lowercase()), Some(t));
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 40, 77] {
            assert_eq!(GgmlType::from_u32(removed), None, "{removed}");
        }
        // The sizes kiln dequantizes, as its block decoders read them.
        assert_eq!(GgmlType::Q4_K.block_bytes(), 144);
        assert_eq!(GgmlType::Q6_K.block_bytes(), 210);
        assert_eq!(GgmlType::Q4_1.block_bytes(), 20);
    }
}
