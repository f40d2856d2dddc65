//! How a stack's frames hash to its id: the walk, the capture and the stitching of queued work
//! and JavaScript frames all extend one hash, word by word.

/// Where every hash of a stack starts.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One step of an FNV-1a style hash over whole 64-bit words, with a fold so that high bits of
/// each address reach the low bits of the hash.
#[inline(always)]
pub fn mix(hash: u64, word: u64) -> u64 {
    let h = (hash ^ word).wrapping_mul(FNV_PRIME);
    h ^ (h >> 29)
}
