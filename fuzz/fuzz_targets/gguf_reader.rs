//! Any byte string through the GGUF reader, then everything built on it: dequantizing every
//! tensor, the model config, the weights, the tokenizer and a one-token forward pass. Each
//! must return `Err` or a value, never panic or read out of bounds.
#![no_main]

use kiln::gguf::GgufFile;
use kiln::model::{ModelConfig, Weights};
use kiln::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    for info in file.tensor_infos() {
        let _ = file.dequantize_f32(&info.name);
    }
    if let Ok(tok) = Tokenizer::from_gguf(&file) {
        if let Ok(ids) = tok.encode("hi, <|im_start|> 12 ab\n") {
            let _ = tok.decode(&ids);
        }
    }
    let Ok(cfg) = ModelConfig::from_gguf(&file) else {
        return;
    };
    let Ok(weights) = Weights::load(&file, &cfg) else {
        return;
    };
    let _ = kiln::reference::forward(&cfg, &weights, &[0], false);
});
