// The resident memory an MPI process costs before it holds any data: a C
// program that only initializes Open MPI, reduces one value and finalizes.
// scripts/speed-report measures it next to `instnorm bench`, since on a
// small slice per rank this fixed image, not the kernels, decides the
// "tensors + 10%" memory target.
#include <mpi.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    double one = 1, total = 0;
    MPI_Allreduce(&one, &total, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    return total > 0 ? 0 : 1;
}
