//! Where the real guest's kernel lives: `cargo xtask setup` downloads the Debian cloud
//! kernel package (never installed as the host's kernel) and unpacks it here; the guest
//! harness (`tests::guest`) boots it. This file is the one home of these facts: xtask
//! includes it with `#[path]` (it cannot depend on the tests crate), so it holds
//! constants only.

/// The metapackage whose `Depends:` names the kernel image package to download
/// (`linux-image-<version>-cloud-amd64`): the cloud flavour has virtio-net and boots
/// quickly.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// The cache directory setup unpacks into (`dpkg-deb -x`), one subdirectory per package
/// file (`<package>_<version>`).
pub const CACHE_DIR: &str = "/var/cache/dragonflow/guest-kernel";

/// The symlink in [`CACHE_DIR`] to the unpacked package the tests boot; setup replaces it
/// atomically once a download is unpacked completely, so it never points at half a tree.
pub const CURRENT: &str = "current";
