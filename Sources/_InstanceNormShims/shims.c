// The shims are static inline functions in the header; this file holds the
// one thing that cannot be: the fence counter the tests read.
#include "_InstanceNormShims.h"

_Thread_local unsigned long instnorm_thread_store_fences = 0;

unsigned long instnorm_store_fences_on_this_thread(void) {
    return instnorm_thread_store_fences;
}
