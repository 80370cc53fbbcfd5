//! The `formula` policy's expression over named metrics, e.g.
//! `load * 100 + pending / 4 + mailbox_size`: lower scores are preferred.
//! Parsed once when the pool is configured; evaluated per decision.

use evalexpr::{ContextWithMutableVariables, DefaultNumericTypes, HashMapContext, Node, Value};

/// Read from the configuration as text and parsed there, so a bad
/// formula is refused with the file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Formula {
    text: String,
    tree: Node<DefaultNumericTypes>,
    variables: Vec<String>,
}

/// Two formulas are the same when their text is.
impl PartialEq for Formula {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl TryFrom<String> for Formula {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl Formula {
    pub fn parse(text: &str) -> Result<Self, String> {
        let tree = evalexpr::build_operator_tree::<DefaultNumericTypes>(text).map_err(|e| format!("formula {text:?}: {e}"))?;
        let mut variables: Vec<String> = tree.iter_variable_identifiers().map(str::to_owned).collect();
        variables.sort();
        variables.dedup();
        if tree.iter_variable_identifiers().count() == 0 {
            return Err(format!("formula {text:?} uses no metric"));
        }
        let f = Self { text: text.to_owned(), tree, variables };
        // It must give a number when every metric is present.
        f.eval(|_| Some(1.0)).ok_or_else(|| format!("formula {text:?} does not give a number"))?;
        Ok(f)
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The score for a member whose metrics `metric` looks up; `None` when a
    /// metric it uses was not reported or the result is not a finite number.
    pub fn eval(&self, metric: impl Fn(&str) -> Option<f64>) -> Option<f64> {
        let mut ctx = HashMapContext::<DefaultNumericTypes>::new();
        for v in &self.variables {
            ctx.set_value(v.clone(), Value::Float(metric(v)?)).ok()?;
        }
        let x = self.tree.eval_number_with_context(&ctx).ok()?;
        x.is_finite().then_some(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_from_named_metrics() {
        let f = Formula::parse("load * 100 + pending / 4 + mailbox_size").unwrap();
        let m = |n: &str| match n {
            "load" => Some(0.5),
            "pending" => Some(8.0),
            "mailbox_size" => Some(3.0),
            _ => None,
        };
        assert_eq!(f.eval(m), Some(55.0));
        assert_eq!(f.eval(|n| (n != "pending").then_some(1.0)), None, "a missing metric gives no score");
        assert!(Formula::parse("load +").is_err());
        assert!(Formula::parse("42").is_err());
        assert_eq!(Formula::parse("load / pending").unwrap().eval(|n| Some(if n == "load" { 1.0 } else { 0.0 })), None, "inf is no score");
    }
}
