//! Generation after prefill: feed the prompt, then pick a token from the last position's
//! logits, feed it, and repeat until `max_new` tokens, an end-of-text token or the context end.
//!
//! Two engines implement [`Decoder`]: the GPU pipeline ([`PipelineDecoder`]: one
//! [`Session`] whose KV cache holds prompt + new tokens; each step is a chunk of one token
//! through the same kernels as the prompt, so its logits are the bits a prefill of the whole
//! sequence gives at that position) and the CPU reference ([`ReferenceDecoder`]: its own KV
//! cache, one token at a time, so a step costs one token's forward, not the prefix's).

use std::time::{Duration, Instant};

use crate::gguf::GgufFile;
use crate::gpu::{Device, GpuError};
use crate::model::{ModelConfig, Weights};
use crate::pipeline::{GpuModel, PrefillOptions, Session};
use crate::reference::{self, ReferenceError};
use crate::sample::{Sampler, SamplingOptions};
use crate::tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{0}")]
    Input(String),
    /// The token callback's own error (e.g. stdout closed), passed through.
    #[error("{0:#}")]
    Callback(anyhow::Error),
}

pub type Result<T, E = GenerateError> = std::result::Result<T, E>;

/// An engine that continues a sequence: `prefill` the prompt once, then `step` one token at a
/// time; both return the logits (`vocab` values) of the last position fed.
pub trait Decoder {
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>>;
    fn step(&mut self, token: u32) -> Result<Vec<f32>>;
}

/// The GPU pipeline (or the emulator) as a [`Decoder`].
pub struct PipelineDecoder<'m> {
    session: Session<'m>,
    chunk: usize,
}

impl<'m> PipelineDecoder<'m> {
    /// A session for `capacity` positions (prompt + new tokens, at most the context) whose
    /// prompt is fed in chunks of `chunk` tokens (`None`: the whole prompt at once).
    pub fn new(
        model: &'m GpuModel,
        dev: &Device,
        prompt_len: usize,
        capacity: usize,
        chunk: Option<usize>,
    ) -> Result<Self> {
        let chunk = chunk.unwrap_or(prompt_len).clamp(1, prompt_len.max(1));
        let session = Session::new(model, dev, capacity, chunk, PrefillOptions::default())?;
        Ok(PipelineDecoder { session, chunk })
    }

    /// Kernel launches so far.
    pub fn launches(&self) -> u64 {
        self.session.launches()
    }
}

impl Decoder for PipelineDecoder<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>> {
        if prompt.is_empty() {
            return Err(GenerateError::Input("the prompt is empty".into()));
        }
        for c in prompt.chunks(self.chunk) {
            self.session.forward_chunk(c)?;
        }
        Ok(self.session.logits_of_last()?)
    }
    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        Ok(self.session.step(token)?)
    }
}

/// The CPU reference forward (f64 accumulation) as a [`Decoder`], through its KV cache.
pub struct ReferenceDecoder<'w> {
    cfg: &'w ModelConfig,
    weights: &'w Weights,
    cache: reference::KvCache,
}

impl<'w> ReferenceDecoder<'w> {
    pub fn new(cfg: &'w ModelConfig, weights: &'w Weights) -> Self {
        ReferenceDecoder {
            cfg,
            weights,
            cache: reference::KvCache::new(cfg),
        }
    }
}

impl Decoder for ReferenceDecoder<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>> {
        let l =
            reference::forward_with_cache(self.cfg, self.weights, &mut self.cache, prompt, false)?;
        Ok(l.data)
    }
    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        self.prefill(&[token])
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new` tokens were generated.
    MaxTokens,
    /// The model produced this end-of-text token (it is not printed).
    EndOfText(u32),
    /// The sequence filled the model's context (or the session's capacity).
    ContextEnd,
}

pub struct GenerateOptions {
    /// At most this many new tokens (at least 1).
    pub max_new: usize,
    pub sampling: SamplingOptions,
    /// Tokens that end the text (see [`stop_tokens`]).
    pub stop: Vec<u32>,
    /// Keep the logits each token was chosen from (`Generation::logits`; for tests).
    pub keep_logits: bool,
}

pub struct Generation {
    /// The tokens chosen, in order (an end-of-text token that stopped it included).
    pub tokens: Vec<u32>,
    pub reason: StopReason,
    /// With `keep_logits`: row `i` is the logits token `i` was chosen from, those of position
    /// `prompt.len() - 1 + i`.
    pub logits: Vec<Vec<f32>>,
    /// Prefill of the prompt, up to its logits on the host.
    pub prompt_time: Duration,
    /// From the start of the prefill to the first token chosen (and handed to the callback).
    pub first_token_time: Duration,
    /// Decode steps run (tokens fed after the prompt) and their time.
    pub steps: usize,
    pub step_time: Duration,
}

/// Prefills `prompt` on `dec`, then generates up to `opts.max_new` tokens, calling `on_token`
/// with each token as it is chosen (not with a stop token). `ctx` is the most positions the
/// decoder holds: a token is fed only while the sequence is shorter than that.
pub fn generate(
    dec: &mut dyn Decoder,
    prompt: &[u32],
    ctx: usize,
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(u32) -> anyhow::Result<()>,
) -> Result<Generation> {
    if opts.max_new == 0 {
        return Err(GenerateError::Input("asked for 0 new tokens".into()));
    }
    opts.sampling.validate().map_err(GenerateError::Input)?;
    let mut sampler = Sampler::new(opts.sampling.clone());
    let start = Instant::now();
    let mut logits = dec.prefill(prompt)?;
    let prompt_time = start.elapsed();
    let mut out = Generation {
        tokens: Vec::new(),
        reason: StopReason::MaxTokens,
        logits: Vec::new(),
        prompt_time,
        first_token_time: Duration::ZERO,
        steps: 0,
        step_time: Duration::ZERO,
    };
    let mut len = prompt.len();
    loop {
        let token = sampler.sample(&logits);
        if opts.keep_logits {
            out.logits.push(std::mem::take(&mut logits));
        }
        out.tokens.push(token);
        if out.tokens.len() == 1 {
            out.first_token_time = start.elapsed();
        }
        if opts.stop.contains(&token) {
            out.reason = StopReason::EndOfText(token);
            break;
        }
        on_token(token).map_err(GenerateError::Callback)?;
        if out.tokens.len() >= opts.max_new {
            out.reason = StopReason::MaxTokens;
            break;
        }
        if len >= ctx {
            out.reason = StopReason::ContextEnd;
            break;
        }
        let t = Instant::now();
        logits = dec.step(token)?;
        out.step_time += t.elapsed();
        out.steps += 1;
        len += 1;
    }
    Ok(out)
}

/// The tokens that end generated text: `tokenizer.ggml.eos_token_id` and
/// `tokenizer.ggml.eot_token_id` when the file has them, and `<|im_end|>`, `<|endoftext|>` and
/// `<|eot_id|>` where the vocabulary has them; ids outside the vocabulary are dropped.
pub fn stop_tokens(file: &GgufFile, tokenizer: Option<&Tokenizer>, vocab: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|k| file.get(k).and_then(|v| v.as_u64()))
        .filter_map(|v| u32::try_from(v).ok())
        .collect();
    if let Some(t) = tokenizer {
        ids.extend(
            ["<|im_end|>", "<|endoftext|>", "<|eot_id|>"]
                .iter()
                .filter_map(|s| t.id_of(s)),
        );
    }
    ids.retain(|&id| (id as usize) < vocab);
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// `message` as one ChatML user turn followed by the assistant's turn opening (after the
/// template's default system turn, if it has one: [`default_system_turn`]), when the
/// file's `tokenizer.chat_template` is ChatML (it uses `<|im_start|>` and `<|im_end|>`);
/// otherwise an error saying why not.
pub fn chat_prompt(file: &GgufFile, message: &str) -> std::result::Result<String, String> {
    let Some(template) = file.get("tokenizer.chat_template").and_then(|v| v.as_str()) else {
        return Err(
            "--chat: the model has no chat template (tokenizer.chat_template); give the prompt \
             as plain text"
                .into(),
        );
    };
    if !(template.contains("<|im_start|>") && template.contains("<|im_end|>")) {
        return Err(
            "--chat: the model's chat template is not ChatML, the only template kiln applies; \
             format the prompt yourself and drop --chat"
                .into(),
        );
    }
    Ok(format!(
        "{}<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n",
        default_system_turn(template).unwrap_or_default()
    ))
}

/// The system turn a ChatML template writes when the first message is not a system one
/// (SmolLM2's and Qwen2.5's do: `{{ '<|im_start|>system\nYou are …<|im_end|>\n' }}`), as the
/// template renders it: the first Jinja string literal that holds a whole system turn, with
/// its `\n` escapes as newlines. `None` where the template has none (Qwen3's, plain ChatML).
pub fn default_system_turn(template: &str) -> Option<String> {
    for quote in ['\'', '"'] {
        let open = format!("{quote}<|im_start|>system");
        let mut rest = template;
        while let Some(i) = rest.find(&open) {
            let body = &rest[i + 1..];
            let Some(end) = body.find(quote) else { break };
            let lit = body[..end].replace("\\n", "\n");
            if let Some(turn) = lit.strip_suffix("<|im_end|>\n")
                && turn.starts_with("<|im_start|>system\n")
                && !turn.contains("<|im_end|>")
            {
                return Some(lit);
            }
            rest = &body[end + 1..];
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::default_system_turn;

    #[test]
    fn default_system_turn_of_real_templates() {
        // SmolLM2-135M-Instruct's template (actual newlines inside the literals).
        let smol = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        assert_eq!(
            default_system_turn(smol).as_deref(),
            Some(
                "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
                 Hugging Face<|im_end|>\n"
            )
        );
        // Qwen2.5's shape: a system prefix literal that is not a whole turn comes first, and the
        // `\n` escapes are Jinja's.
        let qwen25 = r"{%- if tools %}{{- '<|im_start|>system\n' }}{%- else %}{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}{%- endif %}{%- endif %}";
        assert_eq!(
            default_system_turn(qwen25).as_deref(),
            Some(
                "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
                 assistant.<|im_end|>\n"
            )
        );
        // Qwen3's and plain ChatML: no default system turn.
        let qwen3 = r"{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}{%- endif %}";
        assert_eq!(default_system_turn(qwen3), None);
        let plain = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
        assert_eq!(default_system_turn(plain), None);
    }
}
