/* Minimal Cortex-M start-up for the QEMU MPS2 boards: vector table, .data/.bss set-up, then main(). */
#include <stdint.h>

extern uint32_t _estack, _sidata, _sdata, _edata, _sbss, _ebss;
int main(void);
void SysTick_Handler(void);

#define CPACR (*(volatile uint32_t *)0xE000ED88u)

void Reset_Handler(void) {
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
  /* The FPU and MVE (CP10, CP11) are off at reset: their first instruction would fault. -O2 may vectorize. */
  CPACR |= 0xFu << 20;
  __asm volatile("dsb\n\tisb" ::: "memory");
#endif
  uint32_t *src = &_sidata;
  for (uint32_t *dst = &_sdata; dst < &_edata;) *dst++ = *src++;
  for (uint32_t *dst = &_sbss; dst < &_ebss;) *dst++ = 0;
  main();
  for (;;) {
  }
}

void Default_Handler(void) {
  for (;;) {
  }
}

typedef void (*vector)(void);

__attribute__((section(".vectors"), used)) const vector vectors[16] = {
    (vector)(uintptr_t)&_estack, Reset_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler,             Default_Handler, 0,             0,               0,
    0,                           Default_Handler, Default_Handler, 0,             Default_Handler,
    SysTick_Handler,
};
