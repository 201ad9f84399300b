//! A request message over the size limit is answered `RESOURCE_EXHAUSTED`.
//!
//! tonic's decoder refuses such a message with `OUT_OF_RANGE`, a code gRPC
//! means for reading past the end of a range; a message bigger than the
//! receiver accepts is `RESOURCE_EXHAUSTED` in gRPC's own status-code
//! guide. None of the server's own errors is `OUT_OF_RANGE`
//! ([`crate::Error`]'s mapping never gives it), so [`TooLarge`] rewrites that
//! code in the head of a response from the service it wraps. The message
//! itself (found and allowed sizes) is kept. Client-streaming calls meet the
//! limit inside the handler, where `Write` maps it the same way.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderValue};
use tonic::server::NamedService;

/// Wraps a gRPC service so that `OUT_OF_RANGE` answers become
/// `RESOURCE_EXHAUSTED`.
#[derive(Debug, Clone)]
pub(crate) struct TooLarge<S>(pub(crate) S);

impl<S: NamedService> NamedService for TooLarge<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, Req, B> Service<http::Request<Req>> for TooLarge<S>
where
    S: Service<http::Request<Req>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Req>) -> Self::Future {
        let answer = self.0.call(req);
        Box::pin(async move {
            let mut res = answer.await?;
            remap(res.headers_mut());
            Ok(res)
        })
    }
}

/// `grpc-status: 11` (`OUT_OF_RANGE`) becomes `8` (`RESOURCE_EXHAUSTED`).
fn remap(headers: &mut http::HeaderMap) {
    let out_of_range = (tonic::Code::OutOfRange as i32).to_string();
    if headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == out_of_range.as_bytes())
    {
        let exhausted = (tonic::Code::ResourceExhausted as i32).to_string();
        headers.insert(
            "grpc-status",
            HeaderValue::from_str(&exhausted).expect("digits are a valid header value"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_out_of_range_is_rewritten() {
        for (given, want) in [("11", "8"), ("0", "0"), ("3", "3"), ("8", "8")] {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-status", HeaderValue::from_static(given));
            remap(&mut h);
            assert_eq!(h.get("grpc-status").unwrap(), want, "from {given}");
        }
        let mut h = http::HeaderMap::new();
        remap(&mut h);
        assert!(h.is_empty(), "no status, nothing added");
    }
}
