//! Chat templates: Jinja templates from `tokenizer_config.json` (a string, or a list of
//! `{name, template}`), `chat_template.jinja`, or GGUF `tokenizer.chat_template`, rendered with
//! minijinja the way Hugging Face `apply_chat_template` renders them (MODELS.md §7):
//! `trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception(msg)`, `strftime_now(fmt)`
//! (local time), `tojson` as Python's `json.dumps(ensure_ascii=False)`, Python string/dict
//! methods (`.strip()`, `.startswith()`, `.items()`, ...), and the variables `messages`,
//! `add_generation_prompt`, `tools`, `bos_token`, `eos_token` plus any extra keyword.
//!
//! [`ChatTemplate::render_prompt`] assembles a prompt the way llama.cpp does for chat
//! completions: BOS/EOS texts from the tokenizer, then a leading BOS text (trailing EOS text)
//! stripped from the render when the tokenizer adds that token itself; the result is tokenized
//! with `encode(text, add_special = true, parse_special = true)`.

use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::Value as Json;

use crate::error::{ModelError, Result};
use crate::format::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

/// The template llama.cpp uses when a GGUF has none (`CHATML_TEMPLATE_SRC`).
/// Byte-for-byte llama.cpp's source: the newlines inside the quotes are real newlines.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages -%}\n  {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n  {{- '<|im_start|>assistant\n' -}}\n{%- endif -%}";

/// A parsed chat template, ready to render.
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: String,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("len", &self.source.len())
            .finish()
    }
}

/// One chat message with plain text content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
    /// `{"role": ..., "content": ...}`
    pub fn to_json(&self) -> Json {
        serde_json::json!({ "role": self.role, "content": self.content })
    }
}

/// What a render gets besides the messages.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    pub add_generation_prompt: bool,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Tool schemas (`tools`), if any.
    pub tools: Option<Json>,
    /// Further template variables (e.g. `enable_thinking`); they win over the ones above.
    pub extra: serde_json::Map<String, Json>,
}

fn fail(origin: &str, msg: impl Into<String>) -> ModelError {
    ModelError::ChatTemplate {
        origin: origin.to_string(),
        msg: msg.into(),
    }
}

/// A minijinja error with its cause chain and template line, on one line.
fn describe(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

impl ChatTemplate {
    /// Parse a template. `origin` names where it came from, for errors.
    pub fn new(source: &str, origin: &str) -> Result<ChatTemplate> {
        let cleaned = strip_generation_tags(source);
        let mut env = Environment::new();
        // Jinja2 as transformers configures it: trim_blocks, lstrip_blocks, and (Jinja2's
        // default) the template's single trailing newline dropped.
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| fail(origin, format!("syntax configuration: {}", describe(&e))))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", cleaned.clone())
            .map_err(|e| {
                fail(
                    origin,
                    format!("cannot parse the template: {}", describe(&e)),
                )
            })?;
        Ok(ChatTemplate {
            env,
            origin: origin.to_string(),
            source: cleaned,
        })
    }

    /// llama.cpp's fallback when a GGUF has no template (ChatML).
    pub fn chatml() -> Result<ChatTemplate> {
        ChatTemplate::new(CHATML_TEMPLATE, "built-in ChatML")
    }

    /// `tokenizer.chat_template` of a GGUF file, `None` if it has none.
    pub fn from_gguf(file: &GgufFile) -> Result<Option<ChatTemplate>> {
        match file.metadata().opt_str("tokenizer.chat_template")? {
            Some(src) => Ok(Some(ChatTemplate::new(
                src,
                &format!("{} (tokenizer.chat_template)", file.path()),
            )?)),
            None => Ok(None),
        }
    }

    /// The default template of a Hugging Face model directory, `None` if it has none. As in
    /// transformers, `chat_template.jinja` wins over `tokenizer_config.json["chat_template"]`
    /// (a string, or a list of `{name, template}` whose `default` entry is used).
    pub fn from_hf_dir(dir: &Path) -> Result<Option<ChatTemplate>> {
        let jinja = dir.join("chat_template.jinja");
        match std::fs::read_to_string(&jinja) {
            Ok(src) => return ChatTemplate::new(&src, &jinja.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ModelError::io(&jinja, e)),
        }
        let config = dir.join("tokenizer_config.json");
        let origin = config.display().to_string();
        let Some(value) = crate::tokenizer::read_json(&config)? else {
            return Ok(None);
        };
        ChatTemplate::from_tokenizer_config(&value, &origin)
    }

    /// The template of a model path: a GGUF file's `tokenizer.chat_template`, or a Hugging
    /// Face directory's (see [`from_hf_dir`](Self::from_hf_dir)) — given as the directory or
    /// as a `.json` file in it; `None` if it has none.
    pub fn from_path(path: &Path) -> Result<Option<ChatTemplate>> {
        if path.is_dir() {
            ChatTemplate::from_hf_dir(path)
        } else if path.extension().is_some_and(|e| e == "json") {
            ChatTemplate::from_hf_dir(path.parent().unwrap_or(Path::new(".")))
        } else {
            ChatTemplate::from_gguf(&GgufFile::open(path)?)
        }
    }

    /// The `chat_template` entry of a parsed tokenizer_config.json (`None` if absent).
    pub fn from_tokenizer_config(config: &Json, origin: &str) -> Result<Option<ChatTemplate>> {
        let src = match config.get("chat_template") {
            None | Some(Json::Null) => return Ok(None),
            Some(Json::String(s)) => s.clone(),
            Some(Json::Array(list)) => {
                let named = |want: &str| {
                    list.iter().find_map(|e| {
                        (e.get("name")?.as_str()? == want)
                            .then(|| e.get("template")?.as_str().map(String::from))
                            .flatten()
                    })
                };
                named("default").ok_or_else(|| {
                    fail(origin, "chat_template is a list without a 'default' entry")
                })?
            }
            Some(_) => return Err(fail(origin, "chat_template is neither a string nor a list")),
        };
        ChatTemplate::new(&src, &format!("{origin} (chat_template)")).map(Some)
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
    /// The template source (after removing HF's `{% generation %}` markers).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render `messages` (JSON objects with `role`, `content`, ...) like HF apply_chat_template.
    pub fn render(&self, messages: &[Json], opts: &RenderOptions) -> Result<String> {
        let mut ctx: Vec<(String, Value)> = vec![
            (
                "messages".into(),
                Value::from(messages.iter().map(json_to_value).collect::<Vec<_>>()),
            ),
            (
                "add_generation_prompt".into(),
                Value::from(opts.add_generation_prompt),
            ),
            (
                "tools".into(),
                opts.tools
                    .as_ref()
                    .map(json_to_value)
                    .unwrap_or(Value::from(())),
            ),
        ];
        if let Some(b) = &opts.bos_token {
            ctx.push(("bos_token".into(), Value::from(b.as_str())));
        }
        if let Some(e) = &opts.eos_token {
            ctx.push(("eos_token".into(), Value::from(e.as_str())));
        }
        for (k, v) in &opts.extra {
            ctx.retain(|(name, _)| name != k);
            ctx.push((k.clone(), json_to_value(v)));
        }
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| fail(&self.origin, describe(&e)))?;
        tmpl.render(Value::from_pairs(ctx))
            .map_err(|e| fail(&self.origin, format!("render failed: {}", describe(&e))))
    }

    /// Render plain-text messages.
    pub fn render_messages(
        &self,
        messages: &[ChatMessage],
        opts: &RenderOptions,
    ) -> Result<String> {
        let json: Vec<Json> = messages.iter().map(ChatMessage::to_json).collect();
        self.render(&json, opts)
    }

    /// The prompt text llama.cpp builds for a chat: `bos_token`/`eos_token` are the tokenizer's
    /// BOS/EOS texts, and a leading BOS text (trailing EOS text) is removed when the tokenizer
    /// adds that token itself, so the prompt does not start with two BOS.
    pub fn render_prompt(
        &self,
        tok: &Tokenizer,
        messages: &[Json],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let opts = RenderOptions {
            add_generation_prompt,
            bos_token: tok.bos_text(),
            eos_token: tok.eos_text(),
            ..RenderOptions::default()
        };
        let mut text = self.render(messages, &opts)?;
        if let Some(bos) = opts.bos_token.as_deref()
            && tok.add_bos()
            && !bos.is_empty()
            && let Some(rest) = text.strip_prefix(bos)
        {
            text = rest.to_string();
        }
        if let Some(eos) = opts.eos_token.as_deref()
            && tok.add_eos()
            && !eos.is_empty()
            && let Some(rest) = text.strip_suffix(eos)
        {
            text = rest.to_string();
        }
        Ok(text)
    }

    /// The token ids of a chat prompt: [`render_prompt`](Self::render_prompt), then
    /// `encode(text, add_special = true, parse_special = true)` as llama-server does.
    pub fn encode_prompt(
        &self,
        tok: &Tokenizer,
        messages: &[Json],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.render_prompt(tok, messages, add_generation_prompt)?;
        tok.encode(&text, true, true)
    }
}

/// Remove HF's `{% generation %}` / `{% endgeneration %}` markers (assistant-mask tracking,
/// which does not change the text) so that minijinja can parse such templates.
fn strip_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(start) = rest.find("{%") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("%}") else {
            break;
        };
        let inner = after[..end].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        if inner != "generation" && inner != "endgeneration" {
            out.push_str(&rest[start..start + 2 + end + 2]);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {msg}"),
    ))
}

/// `datetime.now().strftime(fmt)` in the local time zone.
fn strftime_now(fmt: String) -> std::result::Result<Value, Error> {
    let now = jiff::Zoned::now();
    jiff::fmt::strtime::format(fmt.as_str(), &now)
        .map(Value::from)
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("strftime_now({fmt:?}): {e}"),
            )
        })
}

/// serde_json value → minijinja value (objects keep their key order).
fn json_to_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => Value::from(a.iter().map(json_to_value).collect::<Vec<_>>()),
        Json::Object(m) => Value::from_pairs(m.iter().map(|(k, v)| (k.as_str(), json_to_value(v)))),
    }
}

/// Options of Python's `json.dumps` that HF's `tojson` passes through.
struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

/// HF's `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(usize::try_from(n).unwrap_or(0))),
            None => Some(v.as_str().unwrap_or("").to_string()),
        },
    };
    let (mut item_sep, mut key_sep) = match indent {
        Some(_) => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    if let Some(seps) = kwargs.get::<Option<Vec<String>>>("separators")?
        && let [a, b] = seps.as_slice()
    {
        item_sep = a.clone();
        key_sep = b.clone();
    }
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    dump(&value, &style, 0, &mut out)?;
    Ok(Value::from(out))
}

fn dump(
    v: &Value,
    st: &JsonStyle,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), Error> {
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&py_float_repr(f));
            }
        }
        ValueKind::String => dump_str(v.as_str().unwrap_or(""), st.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            dump_container(out, st, level, '[', ']', &items, |item, out| {
                dump(item, st, level + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in v.try_iter()? {
                let name = match key.as_str() {
                    Some(s) => s.to_string(),
                    None if key.is_none() => "null".to_string(),
                    None => key.to_string(),
                };
                entries.push((name, v.get_item(&key)?));
            }
            if st.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            dump_container(out, st, level, '{', '}', &entries, |(k, val), out| {
                dump_str(k, st.ensure_ascii, out);
                out.push_str(&st.key_sep);
                dump(val, st, level + 1, out)
            })?;
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a value of kind {}", v.kind()),
            ));
        }
    }
    Ok(())
}

fn dump_container<T>(
    out: &mut String,
    st: &JsonStyle,
    level: usize,
    open: char,
    close: char,
    items: &[T],
    mut each: impl FnMut(&T, &mut String) -> std::result::Result<(), Error>,
) -> std::result::Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&st.item_sep);
        }
        if let Some(ind) = &st.indent {
            out.push('\n');
            out.push_str(&ind.repeat(level + 1));
        }
        each(item, out)?;
    }
    if let Some(ind) = &st.indent {
        out.push('\n');
        out.push_str(&ind.repeat(level));
    }
    out.push(close);
    Ok(())
}

/// A JSON string as Python's json.dumps writes it.
fn dump_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form outside 1e-4..1e16.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sci = format!("{:e}", f.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    let decpt = exp + 1;
    if f == 0.0 {
        return format!("{sign}0.0");
    }
    if decpt <= -4 || decpt > 16 {
        let (head, tail) = digits.split_at(1);
        let frac = if tail.is_empty() {
            String::new()
        } else {
            format!(".{tail}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{head}{frac}e{esign}{:02}", exp.abs());
    }
    let n = digits.len() as i32;
    if decpt <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt >= n {
        format!("{sign}{digits}{}.0", "0".repeat((decpt - n) as usize))
    } else {
        let (a, b) = digits.split_at(decpt as usize);
        format!("{sign}{a}.{b}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123.456, "123.456"),
            (1.5e-7, "1.5e-07"),
            (0.0, "0.0"),
        ] {
            assert_eq!(py_float_repr(f), s, "{f}");
        }
    }

    #[test]
    fn tojson_like_python() {
        let t = ChatTemplate::new(
            "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ 'é\"\\n' | tojson }}",
            "test",
        )
        .unwrap();
        let opts = RenderOptions {
            extra: serde_json::from_str(r#"{"x": {"b": [1, 2.5, null, true], "a": "ü"}}"#).unwrap(),
            ..RenderOptions::default()
        };
        let out = t.render(&[], &opts).unwrap();
        let parts: Vec<&str> = out.split('|').collect();
        // serde_json (without preserve_order) sorts keys; order within the JSON is kept.
        assert_eq!(parts[0], r#"{"a": "ü", "b": [1, 2.5, null, true]}"#);
        assert_eq!(
            parts[1],
            "{\n  \"a\": \"ü\",\n  \"b\": [\n    1,\n    2.5,\n    null,\n    true\n  ]\n}"
        );
        assert_eq!(parts[2], r#""é\"\n""#);
    }

    #[test]
    fn hf_environment() {
        let src = "{% for m in messages %}\n  {% if loop.index0 == 5 %}{% break %}{% endif %}\n{{ m.content.strip().upper() }}\n{% endfor %}{% if messages | length > 9 %}{{ raise_exception('too many') }}{% endif %}{% generation %}x{% endgeneration %}";
        let t = ChatTemplate::new(src, "test").unwrap();
        let msgs = vec![ChatMessage::new("user", " hi ").to_json()];
        assert_eq!(t.render(&msgs, &RenderOptions::default()).unwrap(), "HI\nx");
        let many: Vec<Json> = (0..10).map(|_| msgs[0].clone()).collect();
        let err = t
            .render(&many, &RenderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("too many"), "{err}");
        let now = ChatTemplate::new("{{ strftime_now('%Y') }}", "test").unwrap();
        let year = now.render(&[], &RenderOptions::default()).unwrap();
        assert_eq!(year.len(), 4);
        assert!(year.starts_with("20"), "{year}");
    }

    #[test]
    fn chatml_fallback() {
        let out = ChatTemplate::chatml()
            .unwrap()
            .render_messages(
                &[ChatMessage::new("user", "Hi")],
                &RenderOptions {
                    add_generation_prompt: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
