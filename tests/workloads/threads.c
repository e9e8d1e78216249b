/* threads N SECONDS: starts N threads that sleep, waits, exits with status 0.
 * Used to check that threads never show up as processes. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static unsigned hold;

static void *sleeper(void *arg)
{
    (void)arg;
    sleep(hold);
    return NULL;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 50;
    hold = argc > 2 ? (unsigned)atoi(argv[2]) : 1;
    pthread_t t[1024];
    if (n > 1024) n = 1024;
    for (int i = 0; i < n; i++)
        pthread_create(&t[i], NULL, sleeper, NULL);
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    return 0;
}
