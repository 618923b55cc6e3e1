//! Event arguments as the application sees them: JSON values in which each
//! binary argument is a `{"_placeholder":true,"num":i}` object referring to
//! `attachments[i]`, exactly as Socket.IO carries them.

use bytes::Bytes;
use serde_json::Value;

/// Arguments of an event or an acknowledgement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload {
    /// The arguments (after the event name, for events).
    pub args: Vec<Value>,
    /// Binary attachments referred to by placeholders in `args`.
    pub attachments: Vec<Bytes>,
}

impl Payload {
    /// No arguments.
    pub fn empty() -> Self {
        Self::default()
    }

    /// JSON arguments only.
    pub fn json(args: Vec<Value>) -> Self {
        Self { args, attachments: Vec::new() }
    }

    /// Appends a JSON argument.
    pub fn arg(mut self, value: impl Into<Value>) -> Self {
        self.args.push(value.into());
        self
    }

    /// Appends a binary argument.
    pub fn binary(mut self, data: impl Into<Bytes>) -> Self {
        let placeholder = self.placeholder(data.into());
        self.args.push(placeholder);
        self
    }

    /// Registers `data` as an attachment and returns the placeholder to put
    /// anywhere inside an argument (binary nested in objects or arrays).
    pub fn placeholder(&mut self, data: Bytes) -> Value {
        let num = self.attachments.len();
        self.attachments.push(data);
        serde_json::json!({ "_placeholder": true, "num": num })
    }

    /// If `value` is a placeholder, the attachment it refers to.
    pub fn attachment_of(&self, value: &Value) -> Option<&Bytes> {
        let obj = value.as_object()?;
        if obj.get("_placeholder") != Some(&Value::Bool(true)) {
            return None;
        }
        let num = usize::try_from(obj.get("num")?.as_u64()?).ok()?;
        self.attachments.get(num)
    }

    /// Whether any argument is binary.
    pub fn has_binary(&self) -> bool {
        !self.attachments.is_empty()
    }
}

impl From<Vec<Value>> for Payload {
    fn from(args: Vec<Value>) -> Self {
        Self::json(args)
    }
}

impl From<Value> for Payload {
    fn from(arg: Value) -> Self {
        Self::json(vec![arg])
    }
}

impl From<()> for Payload {
    fn from((): ()) -> Self {
        Self::empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_arguments_become_placeholders() {
        let p = Payload::empty().arg("x").binary(vec![1u8, 2]).binary(Bytes::from_static(b"z"));
        assert_eq!(p.args[1], serde_json::json!({"_placeholder": true, "num": 0}));
        assert_eq!(p.args[2], serde_json::json!({"_placeholder": true, "num": 1}));
        assert_eq!(p.attachment_of(&p.args[2]), Some(&Bytes::from_static(b"z")));
        assert_eq!(p.attachment_of(&p.args[0]), None);
    }
}
