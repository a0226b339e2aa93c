//! AES-256-XTS decryption of fscrypt file contents (IEEE 1619 XTS, the IV
//! being the little-endian index of the data unit in the file), fast enough
//! to check whole volumes: on CPUs with VAES and AVX-512 sixteen blocks go
//! through AES at once; elsewhere the `aes` crate decrypts eight at a time.
//! Both paths are checked against the xts-mode crate in the tests below, and
//! end to end against the kernel by the verify-encryption tests.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes256;
use anyhow::{bail, Result};

use crate::keyring::SecretKey;

/// Blocks handed to the portable AES path at once.
const PARALLEL_BLOCKS: usize = 8;

/// Decrypts the data units of one file.
pub struct ContentsCipher {
    data: Aes256,
    tweak: Aes256,
    #[cfg(target_arch = "x86_64")]
    vaes: Option<vaes::RoundKeys>,
}

impl ContentsCipher {
    /// From a 64-byte per-file contents key (data key || tweak key).
    pub fn new(file_key: &SecretKey) -> Result<Self> {
        Self::with_acceleration(file_key, true)
    }

    /// `accelerate: false` forces the portable path (for tests and comparisons).
    pub fn with_acceleration(file_key: &SecretKey, accelerate: bool) -> Result<Self> {
        if file_key.len() != 64 {
            bail!("AES-256-XTS needs a 64-byte key, got {}", file_key.len());
        }
        let (k1, k2) = file_key.as_ref().split_at(32);
        Ok(Self {
            data: Aes256::new_from_slice(k1).expect("32-byte key"),
            tweak: Aes256::new_from_slice(k2).expect("32-byte key"),
            #[cfg(target_arch = "x86_64")]
            vaes: if accelerate {
                vaes::RoundKeys::new(k1.try_into().expect("32 bytes"))
            } else {
                None
            },
        })
    }

    /// Whether the VAES/AVX-512 path is in use.
    pub fn accelerated(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.vaes.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    /// Decrypts data unit number `index` in place. fscrypt data units are
    /// multiples of the AES block size, so no ciphertext stealing is needed.
    pub fn decrypt_unit(&self, index: u64, data: &mut [u8]) -> Result<()> {
        if !data.len().is_multiple_of(16) {
            bail!("data unit of {} bytes is not a multiple of 16", data.len());
        }
        let mut t = aes::Block::default();
        t[..8].copy_from_slice(&index.to_le_bytes());
        self.tweak.encrypt_block(&mut t);
        let tweak = u128::from_le_bytes(t.into());
        #[cfg(target_arch = "x86_64")]
        if let Some(keys) = &self.vaes {
            keys.decrypt(tweak, data);
            return Ok(());
        }
        self.decrypt_portable(tweak, data);
        Ok(())
    }

    fn decrypt_portable(&self, mut tweak: u128, data: &mut [u8]) {
        let mut blocks = [aes::Block::default(); PARALLEL_BLOCKS];
        let mut tweaks = [0u128; PARALLEL_BLOCKS];
        for chunk in data.chunks_mut(16 * PARALLEL_BLOCKS) {
            let n = chunk.len() / 16;
            for i in 0..n {
                tweaks[i] = tweak;
                tweak = mul_alpha(tweak);
                let c =
                    u128::from_le_bytes(chunk[16 * i..16 * i + 16].try_into().expect("16 bytes"));
                blocks[i] = (c ^ tweaks[i]).to_le_bytes().into();
            }
            self.data.decrypt_blocks(&mut blocks[..n]);
            for i in 0..n {
                let p = u128::from_le_bytes(blocks[i].into()) ^ tweaks[i];
                chunk[16 * i..16 * i + 16].copy_from_slice(&p.to_le_bytes());
            }
        }
        blocks.iter_mut().for_each(|b| b.fill(0));
    }
}

/// Multiplies an XTS tweak by x in GF(2^128) (little-endian convention).
fn mul_alpha(t: u128) -> u128 {
    (t << 1) ^ if t >> 127 == 1 { 0x87 } else { 0 }
}

#[cfg(target_arch = "x86_64")]
mod vaes {
    //! AES-256 decryption with VAES on 512-bit registers: four blocks per
    //! instruction, four registers in flight.

    use std::arch::x86_64::*;

    use super::mul_alpha;

    /// Decryption round keys (equivalent inverse cipher), wiped on drop.
    pub struct RoundKeys {
        dec: [[u8; 16]; 15],
    }

    impl Drop for RoundKeys {
        fn drop(&mut self) {
            zeroize::Zeroize::zeroize(&mut self.dec);
        }
    }

    impl RoundKeys {
        /// `None` when the CPU lacks AES-NI, VAES, VPCLMULQDQ or AVX-512F.
        pub fn new(key: &[u8; 32]) -> Option<Self> {
            if !(is_x86_feature_detected!("aes")
                && is_x86_feature_detected!("vaes")
                && is_x86_feature_detected!("vpclmulqdq")
                && is_x86_feature_detected!("avx512f"))
            {
                return None;
            }
            // SAFETY: the features the function needs were detected above.
            Some(Self {
                dec: unsafe { expand_decryption_keys(key) },
            })
        }

        pub fn decrypt(&self, tweak: u128, data: &mut [u8]) {
            // SAFETY: `new` only builds RoundKeys after detecting the features.
            unsafe { decrypt(&self.dec, tweak, data) }
        }
    }

    #[target_feature(enable = "aes,sse2")]
    unsafe fn expand_decryption_keys(key: &[u8; 32]) -> [[u8; 16]; 15] {
        // AES-256 key schedule with AESKEYGENASSIST (Intel AES-NI white paper).
        #[inline(always)]
        unsafe fn assist1(t1: __m128i, t2: __m128i) -> __m128i {
            let t2 = _mm_shuffle_epi32(t2, 0xff);
            let mut t1 = t1;
            let mut t4 = _mm_slli_si128(t1, 4);
            t1 = _mm_xor_si128(t1, t4);
            t4 = _mm_slli_si128(t4, 4);
            t1 = _mm_xor_si128(t1, t4);
            t4 = _mm_slli_si128(t4, 4);
            t1 = _mm_xor_si128(t1, t4);
            _mm_xor_si128(t1, t2)
        }
        #[inline(always)]
        unsafe fn assist2(t1: __m128i, t3: __m128i) -> __m128i {
            let t2 = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(t1, 0), 0xaa);
            let mut t3 = t3;
            let mut t4 = _mm_slli_si128(t3, 4);
            t3 = _mm_xor_si128(t3, t4);
            t4 = _mm_slli_si128(t4, 4);
            t3 = _mm_xor_si128(t3, t4);
            t4 = _mm_slli_si128(t4, 4);
            t3 = _mm_xor_si128(t3, t4);
            _mm_xor_si128(t3, t2)
        }
        let mut enc = [_mm_setzero_si128(); 15];
        let mut t1 = _mm_loadu_si128(key.as_ptr().cast());
        let mut t3 = _mm_loadu_si128(key.as_ptr().add(16).cast());
        enc[0] = t1;
        enc[1] = t3;
        // Each step makes two round keys; the last makes one. (The round
        // constant must be an immediate, hence a macro rather than a loop.)
        macro_rules! step {
            ($i:expr, $rcon:expr) => {
                t1 = assist1(t1, _mm_aeskeygenassist_si128(t3, $rcon));
                enc[$i] = t1;
                t3 = assist2(t1, t3);
                enc[$i + 1] = t3;
            };
        }
        step!(2, 0x01);
        step!(4, 0x02);
        step!(6, 0x04);
        step!(8, 0x08);
        step!(10, 0x10);
        step!(12, 0x20);
        enc[14] = assist1(t1, _mm_aeskeygenassist_si128(t3, 0x40));
        let mut dec = [[0u8; 16]; 15];
        for (i, out) in dec.iter_mut().enumerate() {
            let k = match i {
                0 => enc[14],
                14 => enc[0],
                _ => _mm_aesimc_si128(enc[14 - i]),
            };
            _mm_storeu_si128(out.as_mut_ptr().cast(), k);
        }
        enc.iter_mut().for_each(|k| *k = _mm_setzero_si128());
        dec
    }

    /// Registers in flight: enough independent AES chains to hide latency.
    /// (Eight measured no faster than four on the machines tried.)
    const REGS: usize = 4;
    /// Blocks per iteration (four per register).
    const BLOCKS: usize = 4 * REGS;
    /// Each iteration advances every tweak by x^BLOCKS: BLOCKS / 8 bytes.
    const SHIFT_BYTES: i32 = (BLOCKS / 8) as i32;

    /// Multiplies the tweak in each 128-bit lane by x^BLOCKS: shift left and
    /// fold the bits shifted out back in with the XTS polynomial (at most
    /// 32 + 8 bits, so the fold cannot overflow the lane).
    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    unsafe fn advance(t: __m512i, poly: __m512i) -> __m512i {
        let carried =
            _mm512_clmulepi64_epi128(_mm512_bsrli_epi128(t, 16 - SHIFT_BYTES), poly, 0x00);
        _mm512_xor_si512(_mm512_bslli_epi128(t, SHIFT_BYTES), carried)
    }

    #[target_feature(enable = "avx512f,vaes,vpclmulqdq,aes,sse2")]
    unsafe fn decrypt(dec: &[[u8; 16]; 15], mut tweak: u128, data: &mut [u8]) {
        let mut wide = [_mm512_setzero_si512(); 15];
        let mut narrow = [_mm_setzero_si128(); 15];
        for i in 0..15 {
            narrow[i] = _mm_loadu_si128(dec[i].as_ptr().cast());
            wide[i] = _mm512_broadcast_i32x4(narrow[i]);
        }
        // Tweaks of the first BLOCKS blocks; each later group is the previous
        // one times x^BLOCKS, computed four lanes at a time.
        let mut first = [0u128; BLOCKS];
        for t in first.iter_mut() {
            *t = tweak;
            tweak = mul_alpha(tweak);
        }
        let poly = _mm512_set_epi64(0, 0x87, 0, 0x87, 0, 0x87, 0, 0x87);
        let mut t = [_mm512_setzero_si512(); REGS];
        for (j, tj) in t.iter_mut().enumerate() {
            *tj = _mm512_loadu_si512(first.as_ptr().add(4 * j).cast());
        }
        let mut chunks = data.chunks_exact_mut(16 * BLOCKS);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr();
            let mut x = [_mm512_setzero_si512(); REGS];
            for j in 0..REGS {
                x[j] = _mm512_xor_si512(_mm512_loadu_si512(p.add(64 * j).cast()), t[j]);
                x[j] = _mm512_xor_si512(x[j], wide[0]);
            }
            for key in &wide[1..14] {
                for xj in x.iter_mut() {
                    *xj = _mm512_aesdec_epi128(*xj, *key);
                }
            }
            for j in 0..REGS {
                x[j] = _mm512_aesdeclast_epi128(x[j], wide[14]);
                _mm512_storeu_si512(p.add(64 * j).cast(), _mm512_xor_si512(x[j], t[j]));
                t[j] = advance(t[j], poly);
            }
        }
        // The tweak of the next block is lane 0 of the first register.
        _mm_storeu_si128(
            (&mut tweak as *mut u128).cast(),
            _mm512_castsi512_si128(t[0]),
        );
        // Fewer than BLOCKS blocks left: one at a time.
        for block in chunks.into_remainder().chunks_exact_mut(16) {
            let t = _mm_loadu_si128((&tweak as *const u128).cast());
            let mut x = _mm_xor_si128(_mm_loadu_si128(block.as_ptr().cast()), t);
            x = _mm_xor_si128(x, narrow[0]);
            for key in &narrow[1..14] {
                x = _mm_aesdec_si128(x, *key);
            }
            x = _mm_aesdeclast_si128(x, narrow[14]);
            _mm_storeu_si128(block.as_mut_ptr().cast(), _mm_xor_si128(x, t));
            tweak = mul_alpha(tweak);
        }
        wide.iter_mut().for_each(|k| *k = _mm512_setzero_si512());
        narrow.iter_mut().for_each(|k| *k = _mm_setzero_si128());
        first.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cipher: &ContentsCipher, key: &SecretKey) {
        use xts_mode::Xts128;
        let (k1, k2) = key.as_ref().split_at(32);
        let reference = Xts128::new(
            Aes256::new_from_slice(k1).unwrap(),
            Aes256::new_from_slice(k2).unwrap(),
        );
        for (index, len) in [
            (0u64, 4096usize),
            (1, 4096),
            (0xdead_beef_1234, 4096),
            (7, 512),
            (3, 16),
            (9, 48),
            (5, 272),
            (6, 528),
            (8, 8192),
        ] {
            let mut plain = vec![0u8; len];
            getrandom::getrandom(&mut plain).unwrap();
            let mut buf = plain.clone();
            let mut tweak = [0u8; 16];
            tweak[..8].copy_from_slice(&index.to_le_bytes());
            reference.encrypt_sector(&mut buf, tweak);
            assert_ne!(buf, plain);
            cipher.decrypt_unit(index, &mut buf).unwrap();
            assert_eq!(
                buf,
                plain,
                "index {index}, {len} bytes, accelerated {}",
                cipher.accelerated()
            );
        }
        assert!(cipher.decrypt_unit(0, &mut [0u8; 20]).is_err());
    }

    #[test]
    fn both_paths_match_the_xts_mode_crate() {
        let key = SecretKey::random(64).unwrap();
        check(
            &ContentsCipher::with_acceleration(&key, false).unwrap(),
            &key,
        );
        let fast = ContentsCipher::new(&key).unwrap();
        if !fast.accelerated() {
            eprintln!("no VAES/AVX-512 on this CPU: only the portable path was checked");
        }
        check(&fast, &key);
    }
}
