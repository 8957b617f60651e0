//! What `OtelLayer` records beyond its defaults, each opted into.

use http::header::{HeaderMap, HeaderName};
use http::{Request, Response, Uri};
use opentelemetry::{Array, Key, KeyValue, StringValue, Value};

use crate::attributes::URL_FULL;

/// The layer's opt-ins, shared by its services.
#[derive(Clone, Debug, Default)]
pub(crate) struct Options {
    /// `url.full`, query string included.
    pub(crate) url_full: bool,
    /// `http.request.header.<name>` for each, with its attribute key.
    pub(crate) request_headers: Vec<(HeaderName, Key)>,
    /// `http.response.header.<name>` for each, with its attribute key.
    pub(crate) response_headers: Vec<(HeaderName, Key)>,
    /// `tower_reuse.partition`, from the request's `Partition` extension.
    #[cfg(feature = "pool")]
    pub(crate) partition: bool,
    /// Links from request spans to their connection's span.
    #[cfg(feature = "pool")]
    pub(crate) connection_spans: Option<crate::ConnectionSpans>,
}

impl Options {
    /// Whether anything is recorded from the request.
    pub(crate) fn reads_request(&self) -> bool {
        #[cfg(feature = "pool")]
        let partition = self.partition;
        #[cfg(not(feature = "pool"))]
        let partition = false;
        self.url_full || !self.request_headers.is_empty() || partition
    }

    /// Whether anything is recorded from the response.
    pub(crate) fn reads_response(&self) -> bool {
        #[cfg(feature = "pool")]
        let links = self.connection_spans.is_some();
        #[cfg(not(feature = "pool"))]
        let links = false;
        !self.response_headers.is_empty() || links
    }

    /// The opted-in request attributes, added to `span`.
    pub(crate) fn request<B>(&self, req: &Request<B>, span: &mut Vec<KeyValue>) {
        if self.url_full {
            span.push(KeyValue::new(URL_FULL, url_full(req.uri())));
        }
        headers(req.headers(), &self.request_headers, span);
        #[cfg(feature = "pool")]
        if self.partition
            && let Some(partition) = req.extensions().get::<tower_reuse_pool::Partition>()
        {
            span.push(KeyValue::new(
                crate::attributes::PARTITION,
                partition.as_str().to_owned(),
            ));
        }
    }

    /// The opted-in response attributes.
    pub(crate) fn response<B>(&self, res: &Response<B>) -> Vec<KeyValue> {
        let mut attributes = Vec::new();
        headers(res.headers(), &self.response_headers, &mut attributes);
        attributes
    }
}

/// `http.<direction>.header.<name>`, the conventions' key for a header.
pub(crate) fn header_key(direction: &str, name: &HeaderName) -> Key {
    Key::from(format!("http.{direction}.header.{}", name.as_str()))
}

/// Each of `names` present in `map`, as a string array of its values.
fn headers(map: &HeaderMap, names: &[(HeaderName, Key)], out: &mut Vec<KeyValue>) {
    for (name, key) in names {
        let values: Vec<StringValue> = map
            .get_all(name)
            .iter()
            .map(|value| {
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into()
            })
            .collect();
        if !values.is_empty() {
            out.push(KeyValue::new(
                key.clone(),
                Value::Array(Array::String(values)),
            ));
        }
    }
}

/// The absolute URL of a request, without user info (the conventions never
/// record credentials).
fn url_full(uri: &Uri) -> String {
    let mut url = String::new();
    if let Some(scheme) = uri.scheme_str() {
        url.push_str(scheme);
        url.push_str("://");
    }
    if let Some(authority) = uri.authority() {
        let authority = authority.as_str();
        url.push_str(
            authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host),
        );
    }
    url.push_str(uri.path_and_query().map_or("/", |p| p.as_str()));
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_full_drops_user_info_and_keeps_the_query() {
        let uri: Uri = "https://user:pw@example.com:8443/a/b?x=1".parse().unwrap();
        assert_eq!(url_full(&uri), "https://example.com:8443/a/b?x=1");
        let uri: Uri = "http://[::1]:80".parse().unwrap();
        assert_eq!(url_full(&uri), "http://[::1]:80/");
    }
}
