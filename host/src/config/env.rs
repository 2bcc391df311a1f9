//! `${VAR}` and `${VAR:-default}` expansion of the pipeline text, before it is parsed.

/// Why a variable could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Expands `${VAR}` and `${VAR:-default}` using `lookup`; `$$` stands for a literal `$`.
/// Works on the raw text so that positions in errors are positions in the file.
pub fn expand(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<EnvError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        // Comments are copied as they are: a `${VAR}` in a comment is documentation.
        let (code, comment) = line.split_at(comment_start(line).unwrap_or(line.len()));
        let mut rest = code;
        let mut column = 1;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            column += rest[..pos].chars().count();
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
                column += 2;
                continue;
            }
            let Some(body) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                column += 1;
                continue;
            };
            let Some(end) = body.find('}') else {
                errors.push(EnvError {
                    line: line_no + 1,
                    column,
                    message: "unterminated `${` (expected `}` on the same line)".into(),
                });
                out.push_str(&rest[pos..]);
                rest = "";
                break;
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid_name = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid_name {
                errors.push(EnvError {
                    line: line_no + 1,
                    column,
                    message: format!("`${{{expr}}}` is not a valid variable reference"),
                });
            } else {
                match (lookup(name), default) {
                    (Some(v), _) if !(v.is_empty() && default.is_some()) => out.push_str(&v),
                    (_, Some(d)) => out.push_str(d),
                    (Some(v), None) => out.push_str(&v),
                    (None, None) => errors.push(EnvError {
                        line: line_no + 1,
                        column,
                        message: format!("environment variable `{name}` is not set and `${{{name}}}` has no default (write `${{{name}:-default}}`)"),
                    }),
                }
            }
            let consumed = 2 + end + 1;
            column += rest[pos..pos + consumed].chars().count();
            rest = &rest[pos + consumed..];
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Where a YAML comment starts on `line`: a `#` at the start or after white space, outside
/// quotes.
fn comment_start(line: &str) -> Option<usize> {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single && prev != '\\' => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return Some(i),
            _ => {}
        }
        prev = c;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("10.0.0.1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        let text = "a: ${HOST}\nb: ${PORT:-5555}\nc: ${EMPTY:-x}\nd: $$HOME and $5\n";
        assert_eq!(
            expand(text, env).unwrap(),
            "a: 10.0.0.1\nb: 5555\nc: x\nd: $HOME and $5\n"
        );
    }

    #[test]
    fn unset_without_default_names_line_and_column() {
        let errors = expand("a: 1\nb: x ${NOPE}\n", env).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].column), (2, 6));
        assert!(errors[0].message.contains("NOPE"), "{}", errors[0].message);
    }

    #[test]
    fn comments_are_not_expanded() {
        let text = "# uses ${NOPE}\na: \"#${HOST}\" # ${NOPE}\n";
        assert_eq!(
            expand(text, env).unwrap(),
            "# uses ${NOPE}\na: \"#10.0.0.1\" # ${NOPE}\n"
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(expand("a: ${}\n", env).is_err());
        assert!(expand("a: ${OPEN\n", env).is_err());
    }
}
