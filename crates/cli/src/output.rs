//! `-o json|yaml`: any serializable value, printed the way kubectl prints objects.

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("rendering JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("rendering YAML: {0}")]
    Yaml(#[from] serde_saphyr::SerializeError),
}

/// Pretty JSON with a final newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<String, OutputError> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    Ok(s)
}

pub fn yaml<T: Serialize + ?Sized>(value: &T) -> Result<String, OutputError> {
    Ok(serde_saphyr::to_string(&value)?)
}

/// A `v1` `List` of objects, as `kubectl get -o json` prints several.
pub fn list<T: Serialize>(items: &[T]) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn json_and_yaml() {
        let v = super::list(&[json!({"kind": "Gateway"})]);
        let j = super::json(&v).unwrap();
        assert!(j.ends_with("}\n"));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&j).unwrap(), v);
        let y = super::yaml(&v).unwrap();
        assert!(y.contains("kind: List"), "{y}");
        assert!(y.contains("- kind: Gateway"), "{y}");
    }
}
