/* The short-lived child of spawner.c: child TAG INDEX OUTCOME.
 * OUTCOME "eN" exits with status N, "sN" dies by signal N. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 4)
        return 64;
    const char *o = argv[3];
    int n = atoi(o + 1);
    if (o[0] == 's') {
        signal(n, SIG_DFL);
        raise(n);
        pause();
    }
    return n;
}
