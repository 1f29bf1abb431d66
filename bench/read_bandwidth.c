/* A memory read probe for bench/generate.py's bandwidth floor: the sum of n floats, read by n_threads threads
 * (one contiguous share each) with the software prefetch armm's decode step uses, 16 KB ahead. torch's sum()
 * reads more slowly than that on some machines, and a floor measured with a slower read than the step's own would
 * not be a floor. bench/membw.py builds it with the system C compiler and takes the faster of the two. */
#include <stdint.h>

#define BLOCK 4096 /* floats: 16 KB */

float read_sum(const float *data, int64_t n, int n_threads) {
    float total = 0.f;
    #pragma omp parallel for num_threads(n_threads) schedule(static) reduction(+:total)
    for (int64_t block = 0; block < n / BLOCK; block++) {
        const float *p = data + block * BLOCK;
        if (block + 1 < n / BLOCK)
            for (int i = 0; i < BLOCK; i += 16) __builtin_prefetch(p + BLOCK + i, 0, 0);
        float s = 0.f;
        #pragma omp simd reduction(+:s)
        for (int i = 0; i < BLOCK; i++) s += p[i];
        total += s;
    }
    return total;
}
