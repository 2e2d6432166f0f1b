// Open MPI for Swift: `mpi.h`, plus a getter for each handle that Open MPI
// defines as a macro over the address of a global (Swift imports no such
// macro). `swift_name` lets Swift spell each getter as C spells the macro
// (`MPI_COMM_WORLD`, `MPI_FLOAT`, ...), and `_Nonnull` lets it see that a
// predefined handle is never null, so no Swift code unwraps one.
//
// Implementation detail of the `MPI` module, not a stable API: use `MPI`.
#ifndef CMPI_SHIM_H
#define CMPI_SHIM_H

#include <mpi.h>

#define CMPI_HANDLE(type, name) \
    __attribute__((swift_name("getter:" #name "()"))) \
    static inline type _Nonnull CMPI_##name(void) { return name; }

// Communicators.
CMPI_HANDLE(MPI_Comm, MPI_COMM_WORLD)
CMPI_HANDLE(MPI_Comm, MPI_COMM_SELF)

// Datatypes of the element types the `MPI` module supports.
CMPI_HANDLE(MPI_Datatype, MPI_FLOAT)
CMPI_HANDLE(MPI_Datatype, MPI_DOUBLE)
CMPI_HANDLE(MPI_Datatype, MPI_INT32_T)
CMPI_HANDLE(MPI_Datatype, MPI_INT64_T)
CMPI_HANDLE(MPI_Datatype, MPI_UINT8_T)
CMPI_HANDLE(MPI_Datatype, MPI_BYTE)

// Reduction operations.
CMPI_HANDLE(MPI_Op, MPI_SUM)
CMPI_HANDLE(MPI_Op, MPI_MAX)
CMPI_HANDLE(MPI_Op, MPI_MIN)
CMPI_HANDLE(MPI_Op, MPI_LAND)

// Sentinels and error handlers.
CMPI_HANDLE(void *, MPI_IN_PLACE)
CMPI_HANDLE(MPI_Request, MPI_REQUEST_NULL)
CMPI_HANDLE(MPI_Errhandler, MPI_ERRORS_RETURN)
CMPI_HANDLE(MPI_Info, MPI_INFO_NULL)

#undef CMPI_HANDLE

// The one null among them: "no status wanted".
__attribute__((swift_name("getter:MPI_STATUS_IGNORE()")))
static inline MPI_Status * _Nullable CMPI_MPI_STATUS_IGNORE(void) { return MPI_STATUS_IGNORE; }
__attribute__((swift_name("getter:MPI_STATUSES_IGNORE()")))
static inline MPI_Status * _Nullable CMPI_MPI_STATUSES_IGNORE(void) { return MPI_STATUSES_IGNORE; }

#endif // CMPI_SHIM_H
