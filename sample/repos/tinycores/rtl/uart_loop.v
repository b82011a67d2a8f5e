// tc_uart_loop: loopback test top for the UART pair.
// Connects tc_uart_tx to tc_uart_rx through the serial line so that a byte
// written with send comes back on rx_data with rx_valid a frame later. The
// serial line is also brought out on tx_line for a logic analyser.
module tc_uart_loop #(
    parameter CLKS_PER_BIT = 16
) (
    input        clk,
    input        rst,
    input        send,
    input  [7:0] tx_data,
    output [7:0] rx_data,
    output       rx_valid,
    output       tx_busy,
    output       tx_line
);
    wire frame_err;

    tc_uart_tx #(.CLKS_PER_BIT(CLKS_PER_BIT)) u_tx (
        .clk  (clk),
        .rst  (rst),
        .start(send),
        .data (tx_data),
        .tx   (tx_line),
        .busy (tx_busy)
    );

    tc_uart_rx #(.CLKS_PER_BIT(CLKS_PER_BIT)) u_rx (
        .clk      (clk),
        .rst      (rst),
        .rx       (tx_line),
        .data     (rx_data),
        .valid    (rx_valid),
        .frame_err(frame_err)
    );
endmodule
