//! The filter language's lexer and recursive-descent parser.

use super::{
    Arithmetic, Comparison, Expr, FilterError, Literal, MAX_FILTER_DEPTH, MAX_FILTER_LEN, Property,
};

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Int(u64),
    Float(f64),
    Text(String),
    /// A plain name or keyword, as written.
    Word(String),
    /// A double-quoted name.
    Quoted(String),
    Symbol(&'static str),
    End,
}

/// A token and its 1-based character position.
type Placed = (Token, usize);

const SYMBOLS: [&str; 15] = [
    "<>", "!=", "<=", ">=", "=", "<", ">", "(", ")", ",", "+", "-", "*", "/", "%",
];

fn error(position: usize, reason: impl Into<String>) -> FilterError {
    FilterError {
        position,
        reason: reason.into(),
    }
}

fn lex(text: &str) -> Result<Vec<Placed>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        let position = at + 1;
        if c.is_whitespace() {
            at += 1;
        } else if c == '\'' || c == '"' {
            let (content, next) = quoted(&chars, at)?;
            tokens.push((
                if c == '\'' {
                    Token::Text(content)
                } else {
                    Token::Quoted(content)
                },
                position,
            ));
            at = next;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(at + 1).is_some_and(char::is_ascii_digit))
        {
            let (token, next) = number(&chars, at)?;
            tokens.push((token, position));
            at = next;
        } else if c.is_alphabetic() || c == '_' || c == '$' {
            let start = at;
            while at < chars.len()
                && (chars[at].is_alphanumeric() || matches!(chars[at], '_' | '$' | '.'))
            {
                at += 1;
            }
            tokens.push((Token::Word(chars[start..at].iter().collect()), position));
        } else {
            let rest: String = chars[at..chars.len().min(at + 2)].iter().collect();
            let Some(symbol) = SYMBOLS.iter().find(|symbol| rest.starts_with(**symbol)) else {
                return Err(error(position, format!("unexpected character '{c}'")));
            };
            tokens.push((Token::Symbol(symbol), position));
            at += symbol.chars().count();
        }
    }
    tokens.push((Token::End, chars.len() + 1));
    Ok(tokens)
}

/// The content of the quoted text starting at `start` (a doubled quote stands for one), and
/// where it ends.
fn quoted(chars: &[char], start: usize) -> Result<(String, usize), FilterError> {
    let quote = chars[start];
    let mut content = String::new();
    let mut at = start + 1;
    loop {
        match chars.get(at) {
            None => return Err(error(start + 1, format!("unterminated {quote}"))),
            Some(c) if *c == quote => {
                if chars.get(at + 1) == Some(&quote) {
                    content.push(quote);
                    at += 2;
                } else {
                    return Ok((content, at + 1));
                }
            }
            Some(c) => {
                content.push(*c);
                at += 1;
            }
        }
    }
}

fn number(chars: &[char], start: usize) -> Result<(Token, usize), FilterError> {
    let mut at = start;
    let digits = |at: &mut usize| {
        while chars.get(*at).is_some_and(char::is_ascii_digit) {
            *at += 1;
        }
    };
    digits(&mut at);
    let mut decimal = false;
    if chars.get(at) == Some(&'.') {
        decimal = true;
        at += 1;
        digits(&mut at);
    }
    if matches!(chars.get(at), Some('e' | 'E')) {
        let mut exponent = at + 1;
        if matches!(chars.get(exponent), Some('+' | '-')) {
            exponent += 1;
        }
        if chars.get(exponent).is_some_and(char::is_ascii_digit) {
            decimal = true;
            at = exponent;
            digits(&mut at);
        }
    }
    let text: String = chars[start..at].iter().collect();
    let position = start + 1;
    let token = if decimal {
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() => Token::Float(value),
            _ => return Err(error(position, format!("number '{text}' is out of range"))),
        }
    } else {
        Token::Int(
            text.parse()
                .map_err(|_| error(position, format!("number '{text}' is out of range")))?,
        )
    };
    if chars
        .get(at)
        .is_some_and(|c| c.is_alphanumeric() || *c == '_')
    {
        return Err(error(at + 1, "a number runs into a name"));
    }
    Ok((token, at))
}

pub(super) fn parse(text: &str) -> Result<Expr, FilterError> {
    if text.len() > MAX_FILTER_LEN {
        return Err(error(
            1,
            format!("a filter is at most {MAX_FILTER_LEN} bytes"),
        ));
    }
    let mut parser = Parser {
        tokens: lex(text)?,
        at: 0,
        depth: 0,
    };
    let expr = parser.or()?;
    match parser.peek() {
        Token::End => Ok(expr),
        _ => Err(parser.unexpected("an operator or the end")),
    }
}

struct Parser {
    tokens: Vec<Placed>,
    at: usize,
    depth: usize,
}

const KEYWORDS: [&str; 11] = [
    "AND", "OR", "NOT", "BETWEEN", "IN", "LIKE", "ESCAPE", "IS", "NULL", "TRUE", "FALSE",
];

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.at].0
    }

    fn position(&self) -> usize {
        self.tokens[self.at].1
    }

    fn advance(&mut self) -> Token {
        let token = self.tokens[self.at].0.clone();
        if self.at + 1 < self.tokens.len() {
            self.at += 1;
        }
        token
    }

    fn unexpected(&self, wanted: &str) -> FilterError {
        let found = match self.peek() {
            Token::End => "the end".to_owned(),
            Token::Int(value) => format!("'{value}'"),
            Token::Float(value) => format!("'{value}'"),
            Token::Text(text) => format!("'{text}'"),
            Token::Word(word) => format!("'{word}'"),
            Token::Quoted(name) => format!("\"{name}\""),
            Token::Symbol(symbol) => format!("'{symbol}'"),
        };
        error(self.position(), format!("expected {wanted}, found {found}"))
    }

    fn keyword(&mut self, keyword: &str) -> bool {
        let found = matches!(self.peek(), Token::Word(word) if word.eq_ignore_ascii_case(keyword));
        if found {
            self.advance();
        }
        found
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), FilterError> {
        if self.keyword(keyword) {
            Ok(())
        } else {
            Err(self.unexpected(keyword))
        }
    }

    fn symbol(&mut self, symbol: &str) -> bool {
        let found = matches!(self.peek(), Token::Symbol(found) if *found == symbol);
        if found {
            self.advance();
        }
        found
    }

    fn expect_symbol(&mut self, symbol: &str) -> Result<(), FilterError> {
        if self.symbol(symbol) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{symbol}'")))
        }
    }

    /// Runs `rule` one level deeper, refusing nesting past [`MAX_FILTER_DEPTH`].
    fn nested<T>(
        &mut self,
        rule: impl FnOnce(&mut Self) -> Result<T, FilterError>,
    ) -> Result<T, FilterError> {
        if self.depth >= MAX_FILTER_DEPTH {
            return Err(error(
                self.position(),
                format!("nested deeper than {MAX_FILTER_DEPTH}"),
            ));
        }
        self.depth += 1;
        let result = rule(self);
        self.depth -= 1;
        result
    }

    fn or(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.and()?;
        while self.keyword("OR") {
            let right = self.nested(Self::and)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.not()?;
        while self.keyword("AND") {
            let right = self.nested(Self::not)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, FilterError> {
        if self.keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.nested(Self::not)?)));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr, FilterError> {
        let value = self.additive()?;
        let comparison = match self.peek() {
            Token::Symbol("=") => Some(Comparison::Eq),
            Token::Symbol("<>" | "!=") => Some(Comparison::Ne),
            Token::Symbol("<") => Some(Comparison::Lt),
            Token::Symbol("<=") => Some(Comparison::Le),
            Token::Symbol(">") => Some(Comparison::Gt),
            Token::Symbol(">=") => Some(Comparison::Ge),
            _ => None,
        };
        if let Some(comparison) = comparison {
            self.advance();
            let right = self.nested(Self::additive)?;
            return Ok(Expr::Compare(comparison, Box::new(value), Box::new(right)));
        }
        let value = Box::new(value);
        if self.keyword("IS") {
            let negated = self.keyword("NOT");
            self.expect_keyword("NULL")?;
            return Ok(Expr::IsNull { value, negated });
        }
        let negated = self.keyword("NOT");
        if self.keyword("BETWEEN") {
            let low = Box::new(self.nested(Self::additive)?);
            self.expect_keyword("AND")?;
            let high = Box::new(self.nested(Self::additive)?);
            return Ok(Expr::Between {
                value,
                low,
                high,
                negated,
            });
        }
        if self.keyword("IN") {
            self.expect_symbol("(")?;
            let mut list = vec![self.literal()?];
            while self.symbol(",") {
                list.push(self.literal()?);
            }
            self.expect_symbol(")")?;
            return Ok(Expr::In {
                value,
                list,
                negated,
            });
        }
        if self.keyword("LIKE") {
            let pattern = self.text("a pattern in single quotes")?;
            let escape = if self.keyword("ESCAPE") {
                let position = self.position();
                let escape = self.text("an escape character in single quotes")?;
                let mut chars = escape.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Some(c),
                    _ => return Err(error(position, "the escape is one character")),
                }
            } else {
                None
            };
            return Ok(Expr::Like {
                value,
                pattern,
                escape,
                negated,
            });
        }
        if negated {
            return Err(self.unexpected("BETWEEN, IN or LIKE after NOT"));
        }
        Ok(*value)
    }

    fn text(&mut self, wanted: &str) -> Result<String, FilterError> {
        match self.peek().clone() {
            Token::Text(text) => {
                self.advance();
                Ok(text)
            }
            _ => Err(self.unexpected(wanted)),
        }
    }

    /// A literal of an `IN` list: a string or a number, maybe signed.
    fn literal(&mut self) -> Result<Literal, FilterError> {
        let position = self.position();
        let negative = self.symbol("-");
        if !negative {
            self.symbol("+");
        }
        match (self.peek().clone(), negative) {
            (Token::Text(text), false) => {
                self.advance();
                Ok(Literal::Text(text))
            }
            (Token::Int(_) | Token::Float(_), _) => self.number(negative, position),
            _ => Err(self.unexpected("a string or a number")),
        }
    }

    /// The number at the cursor, negated when `negative`.
    fn number(&mut self, negative: bool, position: usize) -> Result<Literal, FilterError> {
        match self.advance() {
            Token::Int(value) => {
                let signed = if negative {
                    -i128::from(value)
                } else {
                    i128::from(value)
                };
                i64::try_from(signed)
                    .map(Literal::Int)
                    .map_err(|_| error(position, "integer out of range"))
            }
            Token::Float(value) => Ok(Literal::Float(if negative { -value } else { value })),
            _ => Err(error(position, "expected a number")),
        }
    }

    fn additive(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Token::Symbol("+") => Arithmetic::Add,
                Token::Symbol("-") => Arithmetic::Sub,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.nested(Self::multiplicative)?;
            left = Expr::Arithmetic(op, Box::new(left), Box::new(right));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Token::Symbol("*") => Arithmetic::Mul,
                Token::Symbol("/") => Arithmetic::Div,
                Token::Symbol("%") => Arithmetic::Rem,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.nested(Self::unary)?;
            left = Expr::Arithmetic(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        let position = self.position();
        if self.symbol("-") {
            // A minus right before a number is part of the literal (so the smallest integer
            // can be written).
            if matches!(self.peek(), Token::Int(_) | Token::Float(_)) {
                return Ok(Expr::Literal(self.number(true, position)?));
            }
            return Ok(Expr::Neg(Box::new(self.nested(Self::unary)?)));
        }
        if self.symbol("+") {
            return self.nested(Self::unary);
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, FilterError> {
        let position = self.position();
        match self.peek().clone() {
            Token::Int(_) | Token::Float(_) => Ok(Expr::Literal(self.number(false, position)?)),
            Token::Text(text) => {
                self.advance();
                Ok(Expr::Literal(Literal::Text(text)))
            }
            Token::Quoted(name) => {
                self.advance();
                Ok(Expr::Header(name))
            }
            Token::Symbol("(") => {
                self.advance();
                let expr = self.nested(Self::or)?;
                self.expect_symbol(")")?;
                Ok(expr)
            }
            Token::Word(word) => {
                let literal = match word.to_ascii_uppercase().as_str() {
                    "NULL" => Some(Literal::Null),
                    "TRUE" => Some(Literal::Bool(true)),
                    "FALSE" => Some(Literal::Bool(false)),
                    _ => None,
                };
                if let Some(literal) = literal {
                    self.advance();
                    return Ok(Expr::Literal(literal));
                }
                if KEYWORDS
                    .iter()
                    .any(|keyword| word.eq_ignore_ascii_case(keyword))
                {
                    return Err(self.unexpected("a value"));
                }
                self.advance();
                name(&word, position)
            }
            _ => Err(self.unexpected("a value")),
        }
    }
}

/// A plain name: `properties.NAME` or a header.
fn name(word: &str, position: usize) -> Result<Expr, FilterError> {
    let prefix = "properties.";
    if let Some(property) = word
        .get(..prefix.len())
        .filter(|head| head.eq_ignore_ascii_case(prefix))
        .map(|_| &word[prefix.len()..])
        .filter(|property| !property.is_empty())
    {
        return Property::named(property)
            .map(Expr::Property)
            .ok_or_else(|| {
                let known: Vec<&str> = Property::ALL.iter().map(|p| p.name()).collect();
                error(
                    position,
                    format!(
                        "unknown property '{property}' (known: {}); quote a header of that name",
                        known.join(", ")
                    ),
                )
            });
    }
    Ok(Expr::Header(word.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn position(text: &str) -> usize {
        parse(text).expect_err(text).position
    }

    #[test]
    fn errors_name_the_position() {
        assert_eq!(position("a = "), 5);
        assert_eq!(position("a = 1 AND"), 10);
        assert_eq!(position("a == 1"), 4);
        assert_eq!(position("(a = 1"), 7);
        assert_eq!(position("a IN ()"), 7);
        assert_eq!(position("a LIKE b"), 8);
        assert_eq!(position("a = 'open"), 5);
        assert_eq!(position("properties.colour = 1"), 1);
        assert_eq!(position("a = 99999999999999999999"), 5);
        assert_eq!(position("a ~ 1"), 3);
        assert_eq!(position("a NOT = 1"), 7);
        assert_eq!(position("a LIKE 'x' ESCAPE 'ab'"), 19);
        let deep = format!("{}a = 1{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep).is_err(), "nesting is bounded");
        assert!(parse(&"a".repeat(9000)).is_err(), "length is bounded");
        assert!(
            parse("zڟ21ۖzڟڟ221ۖڟ = 1").is_ok(),
            "a name of multi-byte characters is a header (found by the fuzzer)"
        );
    }

    #[test]
    fn precedence_is_sqls() {
        let parsed = parse("a = 1 OR b = 2 AND NOT c = 3").expect("parse");
        assert_eq!(
            parsed.to_string(),
            "((\"a\" = 1) OR ((\"b\" = 2) AND (NOT (\"c\" = 3))))"
        );
        let parsed = parse("x + 2 * -y > -9223372036854775808").expect("parse");
        assert_eq!(
            parsed.to_string(),
            "((\"x\" + (2 * (-(\"y\")))) > -9223372036854775808)"
        );
    }
}
