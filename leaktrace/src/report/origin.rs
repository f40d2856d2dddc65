//! What kind of memory a stack allocates, from its frames: Buffer backing stores, a native
//! addon, the V8 heap, libuv, zlib, OpenSSL, ICU, or other.
//!
//! The innermost frame that says something decides: every Node stack has `uv_run` and V8 entry
//! frames at its root, so only the code nearest the allocation tells what it allocates.

use super::model::{Frame, Origin};

/// Classifies a stack by its innermost telling frame.
pub fn classify(frames: &[Frame]) -> Origin {
    frames
        .iter()
        .find_map(frame_origin)
        .unwrap_or(Origin::Other)
}

fn frame_origin(frame: &Frame) -> Option<Origin> {
    if frame.kind == "js" {
        // JavaScript reached before any native code said what it allocates.
        return Some(Origin::Other);
    }
    let module = frame.module.as_deref().unwrap_or("");
    let file_name = module.rsplit('/').next().unwrap_or(module);
    if file_name.ends_with(".node") {
        return Some(Origin::NativeAddon);
    }
    let function = frame.function.as_deref().unwrap_or("");
    let has = |needles: &[&str]| needles.iter().any(|n| function.contains(n));
    if has(&["NodeArrayBufferAllocator", "BackingStore", "ArrayBuffer::"]) {
        Some(Origin::Buffer)
    } else if function.starts_with("uv_") || function.starts_with("uv__") {
        Some(Origin::Libuv)
    } else if file_name.starts_with("libz.")
        || ["deflate", "inflate", "zcalloc", "Cr_z_", "zng_"]
            .iter()
            .any(|p| function.starts_with(p))
    {
        Some(Origin::Zlib)
    } else if file_name.starts_with("libcrypto")
        || file_name.starts_with("libssl")
        || ["CRYPTO_", "OPENSSL_", "EVP_", "SSL_", "BN_", "ossl_"]
            .iter()
            .any(|p| function.starts_with(p))
    {
        Some(Origin::Openssl)
    } else if function.contains("icu_") || file_name.starts_with("libicu") {
        Some(Origin::Icu)
    } else if function.starts_with("v8::") {
        Some(Origin::V8Heap)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(function: &str, module: &str) -> Frame {
        Frame {
            kind: "native".into(),
            function: Some(function.into()),
            module: Some(module.into()),
            ..Frame::default()
        }
    }

    fn js(function: &str) -> Frame {
        Frame {
            kind: "js".into(),
            function: Some(function.into()),
            ..Frame::default()
        }
    }

    #[test]
    fn innermost_telling_frame_decides() {
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let node = "/usr/bin/node";
        let buffer = [
            native("__GI___libc_malloc", libc),
            native(
                "node::NodeArrayBufferAllocator::AllocateUninitialized(unsigned long)",
                node,
            ),
            native("v8::internal::Heap::AllocateExternalBackingStore", node),
            js("leakIntoGlobalArray"),
            native("uv_run", node),
        ];
        assert_eq!(classify(&buffer), Origin::Buffer);
        let addon = [
            native("malloc", libc),
            native("leaky_addon_retain", "/srv/build/leaky_addon.node"),
            native("v8::internal::FunctionCallbackArguments::Call", node),
        ];
        assert_eq!(classify(&addon), Origin::NativeAddon);
        let zlib = [
            native("malloc", libc),
            native("zcalloc", node),
            native("deflateInit2_", node),
        ];
        assert_eq!(classify(&zlib), Origin::Zlib);
        let ssl = [
            native("malloc", libc),
            native("CRYPTO_zalloc", "/usr/lib/libcrypto.so.3"),
        ];
        assert_eq!(classify(&ssl), Origin::Openssl);
        let icu = [
            native("malloc", libc),
            native("icu_74::UMemory::operator new(unsigned long)", node),
            native("v8::internal::JSDateTimeFormat::New", node),
        ];
        assert_eq!(classify(&icu), Origin::Icu);
        let uv = [
            native("malloc", libc),
            native("uv__malloc", node),
            native("uv_fs_scandir", node),
        ];
        assert_eq!(classify(&uv), Origin::Libuv);
        let v8 = [
            native("malloc", libc),
            native("v8::internal::Zone::NewExpand", node),
        ];
        assert_eq!(classify(&v8), Origin::V8Heap);
        assert_eq!(
            classify(&[native("malloc", libc), native("main", "/srv/app")]),
            Origin::Other
        );
        assert_eq!(classify(&[]), Origin::Other);
    }
}
