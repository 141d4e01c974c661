#ifndef JAIL_CAPS_H
#define JAIL_CAPS_H
int jail_drop_capabilities(int *which);
#endif
